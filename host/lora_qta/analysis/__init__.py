"""Studies of the accelerator: LoRA shapes of real UNets, the dataflow/roofline study, the energy
model, power recording, emulation speed and the host time per accelerator call. Models, reports
and plots live in separate modules; the command line (``lora_qta.cli``) parses the options."""
