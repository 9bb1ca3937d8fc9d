"""Text-to-video (and image) generation with classifier-free guidance, as LWM.

The batch holds the conditional prompt(s) followed by as many unconditional prompts (the same
template with an empty description), so both branches share every decode step. At each step the
vision head's logits are restricted to the VQ codebook, combined as
`uncond + scale * (cond - uncond)` (scale `guidance_first` for the first frame, `guidance_rest`
for later frames, LWM's image/video scales), filtered by top-k and sampled; the chosen code is fed
to both branches. After each frame's `h*w` codes the end-of-frame code is forced (end-of-video after
the last frame), so the output always parses into whole frames.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lwm.errors import LwmError
from lwm.inference.prompts import DEFAULT_TEMPLATE, Template, generation_prompt
from lwm.inference.sampler import DecodeMode, Sampler
from lwm.inference.sampling import SamplingConfig
from lwm.inference.video_qa import check_vision_model


@dataclasses.dataclass(frozen=True)
class VideoGenerationConfig:
    n_frames: int = 8
    """Frames to generate (1 = an image, with the image prompt template)."""
    guidance_first: float = 5.0
    """Classifier-free guidance scale of the first frame (LWM: image scale)."""
    guidance_rest: float = 1.0
    """Guidance scale of later frames (LWM: video scale)."""
    temperature: float = 1.0
    """Sampling temperature of VQ codes."""
    top_k: int = 100
    """Sample among the k most likely codes (after guidance); 0 = all codes."""
    top_p: float = 1.0
    """Nucleus sampling threshold; 1 = off."""

    def __post_init__(self):
        if self.n_frames < 1:
            raise LwmError(f"frames must be >= 1, got {self.n_frames}")

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.temperature, self.top_k, self.top_p)


def frame_schedule(n_frames: int, tokens_per_frame: int, eof_id: int, eov_id: int) -> np.ndarray:
    """`[steps]` forced token per step (-1 = sampled): separators after each frame's codes."""
    per = tokens_per_frame + 1
    forced = np.full((n_frames * per,), -1, np.int32)
    forced[per - 1 :: per] = eof_id
    forced[-1] = eov_id
    return forced


def generate_codes(
    sampler: Sampler,
    tokenizer,
    prompts: list[str],
    *,
    codebook_size: int,
    latent_size: int,
    config: VideoGenerationConfig = VideoGenerationConfig(),
    template: Template = DEFAULT_TEMPLATE,
    seed: int = 0,
    on_frame=None,
) -> np.ndarray:
    """VQ codes `[len(prompts), n_frames, h, w]` for each text prompt."""
    mcfg = sampler.config
    check_vision_model(mcfg, codebook_size)
    image = config.n_frames == 1
    cond = [generation_prompt(tokenizer, template, p, image=image) for p in prompts]
    uncond = [generation_prompt(tokenizer, template, "", image=image)] * len(prompts)
    tpf = latent_size * latent_size
    schedule = frame_schedule(config.n_frames, tpf, mcfg.vision_eof_id, mcfg.vision_eov_id)
    steps = len(schedule)
    longest = max(len(p) for p in cond)
    if longest + steps > mcfg.max_sequence_length:
        raise LwmError(
            f"{config.n_frames} frames of {tpf} codes plus a {longest}-token prompt need "
            f"{longest + steps} tokens, more than the model's max_sequence_length "
            f"{mcfg.max_sequence_length}"
        )
    b = len(prompts)
    forced = np.repeat(schedule[:, None], 2 * b, axis=1)
    scales = np.full((steps,), config.guidance_rest, np.float32)
    scales[: tpf + 1] = config.guidance_first
    cache, length, hidden = sampler.start(cond + uncond, max_new_tokens=steps)
    mode = DecodeMode(output="vision", num_codes=codebook_size, guided=True)

    def stream(step, toks):
        if on_frame is not None and (step + 1) % (tpf + 1) == 0:
            on_frame((step + 1) // (tpf + 1))

    gen = sampler.decode(
        cache,
        length,
        hidden,
        steps,
        mode=mode,
        sampling=config.sampling,
        seed=seed,
        forced=forced,
        scales=scales,
        stream=stream,
    )
    tokens = gen.tokens[:b].reshape(b, config.n_frames, tpf + 1)[:, :, :tpf]
    return tokens.reshape(b, config.n_frames, latent_size, latent_size)


def generate_video(
    sampler: Sampler,
    tokenizer,
    vqgan,
    prompt: str,
    *,
    config: VideoGenerationConfig = VideoGenerationConfig(),
    template: Template = DEFAULT_TEMPLATE,
    seed: int = 0,
    decode_batch: int = 8,
    on_frame=None,
) -> np.ndarray:
    """uint8 frames `[n_frames, H, W, 3]` for a text prompt (codes decoded by the VQGAN)."""
    from lwm.video.vqgan import make_decode_fn

    codes = generate_codes(
        sampler,
        tokenizer,
        [prompt],
        codebook_size=vqgan.cfg.codebook_size,
        latent_size=vqgan.cfg.latent_size,
        config=config,
        template=template,
        seed=seed,
        on_frame=on_frame,
    )[0]
    decode = make_decode_fn(vqgan)
    frames = []
    for i in range(0, len(codes), decode_batch):  # fixed batch: one decoder compile
        part = codes[i : i + decode_batch]
        padded = np.zeros((decode_batch, *codes.shape[1:]), np.int32)
        padded[: len(part)] = part
        frames.append(np.asarray(decode(padded))[: len(part)])
    return np.concatenate(frames)
