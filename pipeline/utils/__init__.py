"""Small helpers shared by the pipeline, data_prep and checkpoints_tools."""
