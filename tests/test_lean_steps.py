"""Decoder's lean transform steps (cvdist/data/lean_steps.py) give the v2 Compose's exact outputs
and consume torch's random generator exactly as it does, for every preset and option."""

import io

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision.transforms import v2

from cvdist.data.decode import Decoder, plan_steps
from cvdist.data.jpeg_draft import JpegDraftDecoder
from cvdist.data.lean_steps import lean_step, lean_steps
from cvdist.data.transforms import build_transform


def _encoded(*, seed: int, height: int, width: int, grey_file: bool, fmt: str) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width) if grey_file else (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, quality=90)
    return buffer.getvalue()


OPTIONS = st.fixed_dictionaries({
    "preset": st.sampled_from(["none", "flip", "standard", "strong"]),
    "image_size": st.integers(8, 40),
    "grey": st.booleans(),
    "train": st.booleans(),
})


@settings(max_examples=60, deadline=None)
@given(options=OPTIONS, height=st.integers(8, 90), width=st.integers(8, 90), grey_file=st.booleans(),
       fmt=st.sampled_from(["JPEG", "PNG"]), seed=st.integers(0, 2**31 - 1), hflip=st.sampled_from([None, 0.0, 0.3, 1.0]),
       vflip=st.sampled_from([None, 0.0, 0.5]), draft=st.booleans())
def test_decoder_equals_the_compose_on_the_pil_image(options, height, width, grey_file, fmt, seed, hflip, vflip, draft):
    if options["preset"] != "none":
        options = {**options, "hflip": hflip, "vflip": vflip}
    mean, std = ([0.5], [0.25]) if options["grey"] else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    transform = build_transform(mean=mean, std=std, **{k: v for k, v in options.items() if v is not None})
    data = _encoded(seed=seed, height=height, width=width, grey_file=grey_file, fmt=fmt)
    sample = {"__key__": "k", fmt.lower().replace("jpeg", "jpg"): data, "cls": b"0"}
    # The draft decoder's reduced-scale pixels are within tests/test_jpeg_draft.py's tolerance, not
    # equal: here it must draw the same numbers, and match exactly where it cannot draft (PNG).
    exact = not draft or fmt == "PNG"
    decoder = (JpegDraftDecoder if draft else Decoder)(transform, num_classes=1)

    torch.manual_seed(seed)
    with Image.open(io.BytesIO(data)) as image:
        expected = transform(image)
    state_after_compose = torch.get_rng_state()
    torch.manual_seed(seed)
    got = decoder(sample)[0]
    assert type(got) is type(expected) and got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected) or not exact
    assert torch.equal(torch.get_rng_state(), state_after_compose)  # the same draws, no more, no fewer

    torch.manual_seed(seed)
    pixels = decoder.decode_pixels(sample)[0]
    assert torch.equal(decoder.normaliser(pixels[None])[0], got)
    assert torch.equal(torch.get_rng_state(), state_after_compose)


def test_known_steps_are_replaced_and_others_kept():
    crop = v2.RandomResizedCrop(16, antialias=True)
    jitter = v2.ColorJitter(brightness=0.2)
    assert lean_step(jitter) is jitter
    assert lean_step(crop) is not crop and lean_step(v2.RandomHorizontalFlip(0.5)).func.__name__ == "_random_apply"

    class MyFlip(v2.RandomHorizontalFlip):  # a subclass may do more: kept as it is
        pass

    custom = MyFlip(0.5)
    assert lean_step(custom) is custom
    # Without ToPureTensor last the Compose's output type would not be a plain tensor: not made lean.
    assert lean_steps([crop, jitter]) is None


def test_plans_are_built_once_per_decoder_and_survive_pickling():
    import pickle

    transform = build_transform(preset="standard", image_size=16, mean=[0.5] * 3, std=[0.5] * 3, grey=False, train=True)
    decoder = pickle.loads(pickle.dumps(Decoder(transform, num_classes=1)))
    plan = plan_steps(decoder.transform)
    assert decoder._plan is not None and len(decoder._plan.steps) == len(plan.steps)
    assert len(decoder._plan.after_to_image) == len(plan.steps)  # the unwrap step + every step after PILToImage
