"""``python -m lora_qta.cli``: the ``lora-qta`` command."""

from . import main

raise SystemExit(main())
