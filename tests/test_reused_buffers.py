"""The per-batch normalisation's reused output buffers: a batch the caller still holds (directly,
through a view, or through autograd) is never overwritten, a released one is reused, and the
per-image normalisation gives the per-image transform's exact values."""

import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchvision.transforms.v2 import functional as F

from cvdist.data.decode import BatchNormalise
from cvdist.data.reused_buffers import ReusedBuffers, storage_references

LIKE = torch.zeros(2, 3, 4, 5, dtype=torch.uint8)


def test_the_torch_in_use_can_count_storage_references():
    # Without the count every request allocates (correct, but the speed-up is gone): say so here.
    tensor = torch.empty(3)
    alone = storage_references(tensor)
    view = tensor[1:]
    assert alone > 0 and storage_references(tensor) == alone + 1
    del view
    assert storage_references(tensor) == alone


def test_a_released_buffer_is_reused_and_a_held_one_is_not():
    buffers = ReusedBuffers(keep=3)
    first = buffers.empty_like(LIKE, dtype=torch.float32)
    second = buffers.empty_like(LIKE, dtype=torch.float32)
    assert first.data_ptr() != second.data_ptr()  # both held: two buffers
    first_address = first.data_ptr()
    del first
    third = buffers.empty_like(LIKE, dtype=torch.float32)
    assert third.data_ptr() == first_address  # released: written again
    assert third.shape == LIKE.shape and third.stride() == LIKE.stride() and third.dtype == torch.float32


@pytest.mark.parametrize("hold", ["view", "element", "autograd", "list"])
def test_a_batch_held_in_any_form_is_never_handed_out_again(hold):
    buffers = ReusedBuffers(keep=2)
    batch = buffers.empty_like(LIKE, dtype=torch.float32).fill_(7.0)
    address = batch.data_ptr()
    if hold == "view":
        kept = batch[:, 1:]
    elif hold == "element":
        kept = batch[0]
    elif hold == "autograd":  # what a training step's graph saves for its backward pass
        weight = torch.ones(1, requires_grad=True)
        kept = (batch * weight).sum()
    else:
        kept = [batch]
    del batch
    for _ in range(4):
        other = buffers.empty_like(LIKE, dtype=torch.float32)
        assert other.data_ptr() != address
        other.fill_(-1.0)
    if hold == "autograd":
        kept.backward()
        assert torch.equal(weight.grad, torch.tensor([7.0 * LIKE.numel()]))
    elif hold == "list":
        assert bool((kept[0] == 7.0).all())
    else:
        assert bool((kept == 7.0).all())


def test_other_shapes_dtypes_and_strides_get_their_own_buffers():
    buffers = ReusedBuffers(keep=3)
    buffers.empty_like(LIKE, dtype=torch.float32)
    channels_last = LIKE.contiguous(memory_format=torch.channels_last)
    for like, dtype in [(LIKE[:1], torch.float32), (LIKE, torch.float64), (channels_last, torch.float32)]:
        got = buffers.empty_like(like, dtype=dtype)
        assert got.shape == like.shape and got.stride() == like.stride() and got.dtype == dtype
    first = buffers.empty_like(channels_last, dtype=torch.float32, contiguous=True)
    assert first.is_contiguous() and first.shape == LIKE.shape
    first_pointer = first.data_ptr()
    del first
    assert buffers.empty_like(channels_last, dtype=torch.float32, contiguous=True).data_ptr() == first_pointer


def test_pickling_leaves_the_buffers_behind():
    buffers = ReusedBuffers(keep=3)
    held = [buffers.empty_like(LIKE, dtype=torch.float32) for _ in range(3)]
    copy = pickle.loads(pickle.dumps(buffers))
    assert copy.keep == 3 and copy._buffers == [] and len(held) == 3


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 5), channels=st.sampled_from([1, 3]), height=st.integers(1, 40),
       width=st.integers(1, 40), channels_last=st.booleans(), seed=st.integers(0, 2**31 - 1),
       means=st.lists(st.floats(-1, 1, width=32), min_size=3, max_size=3),
       stds=st.lists(st.floats(0.0625, 2, width=32), min_size=3, max_size=3))
def test_batch_normalisation_equals_the_per_image_transform(batch, channels, height, width, channels_last, seed,
                                                            means, stds):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, channels, height, width), dtype=torch.uint8, generator=generator)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    normalise = BatchNormalise(means[:channels], stds[:channels])
    for _ in range(3):  # the later rounds write into reused buffers
        got = normalise(images)
        for image, normalised in zip(images, got):
            expected = F.normalize(F.to_dtype(image, torch.float32, scale=True), means[:channels], stds[:channels])
            assert torch.equal(normalised, expected)
        assert got.is_contiguous()  # whatever the batch's layout: the model gets one layout


def test_a_zero_std_is_refused_when_the_normaliser_is_built():
    with pytest.raises(ValueError, match="zero"):
        BatchNormalise([0.5], [0.0])
