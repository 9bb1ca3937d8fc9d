"""Inference: KV cache, chunked prefill, jitted decode, sampling, video QA and video generation.

Entry points: `lwm.inference.sampler.Sampler` (text/vision token generation from a `Transformer`),
`lwm.inference.video_qa.VideoQA` (questions about one video, prefix prefilled once) and
`lwm.inference.video_generation.generate_video` (classifier-free-guided VQ code generation).
"""
