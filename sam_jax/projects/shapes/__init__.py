"""The bundled toy models' project: SAM and SAM 2 trained from scratch on synthetic shapes.

Synthetic scenes and videos with exact masks (`synthetic`), the training recipe that made
the bundled `sam_tiny_shapes` and `sam2_tiny_shapes` (`recipe`, options in `options`), their
evaluation (`evaluate`), the weight surgery used between stages (`repatch`, `reseat_memory`,
`memory_window`), and the `demo`, `train-shapes` and `eval-shapes` commands (`commands`).
README.md in this folder tells how each bundled model was made and what it scores. The core
library never imports from here.
"""
