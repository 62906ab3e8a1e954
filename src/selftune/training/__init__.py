"""Training: the LoRA loop, the job queue, the pipeline and the worker process."""
