"""LoRA fine-tuning: the embedded default digits model, the model bundles, the training loop,
checkpoints and the fp32-vs-int8 evaluation."""
