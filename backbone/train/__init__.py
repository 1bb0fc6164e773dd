"""Training shared by every LoRA trainer (never imported by `lodestar serve`).

loop         `fit`: resumable training with dev evaluation, early stopping and atomic checkpoints;
             `lora_model`, `seed_everything`, `adapter_folder`, `atomic_dir`
"""
