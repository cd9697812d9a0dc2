"""Few-shot evaluation of a trained Flamingo: task readers and prompts (tasks), metrics, and the
evaluation loop with random or RICES support selection (evaluate). Command: ``train-flamingo eval``."""
