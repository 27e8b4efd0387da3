"""The main job (``parscale run``): every stage from one config, and its report."""
