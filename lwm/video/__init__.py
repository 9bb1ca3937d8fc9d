"""Video: a trainable VQGAN tokenizer, streaming PyAV reading/writing, video -> vision tokens.

Modules: `config` (VQGANConfig), `vqgan` (model, compiled encode/decode), `quantizer`,
`vqgan_losses`, `vqgan_train`, `vqgan_checkpoint` (`load_vqgan`), `frame_data`, `reader`
(`read_frames`), `writer` (`write_video`), `tokenize` (token layout, jsonl), `reconstruct`,
`baseline` (patch-mean tokenizer). Importing this package imports nothing heavy.
"""
