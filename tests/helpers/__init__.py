"""What tests share: paths, subprocess runners, tiny corpora, models, training configs, launch fakes."""
