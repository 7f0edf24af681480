"""Pure-torch GAN core: shapes, conditioning, loss signs, augmentation, checkpoint round trip,
generation by attributes (no Ray)."""


import numpy as np
import pytest
import torch

from prodray.config import ConfigError, GanTrainConfig, load_config
from prodray.gan.augment import diff_augment, parse_policy
from prodray.gan.inference import ProductGenerator, UnknownAttribute
from prodray.gan.losses import class_loss, d_loss, g_loss, mode_seeking_loss, r1_penalty
from prodray.gan.model import MinibatchStddev, build_discriminator, build_generator
from prodray.gan.training import grid_conditions
from prodray.io import artifacts as ckpt_io
from prodray.training import apply_configured_hyperparameters, linear_decay_factor

VOCAB = {"articleType": ["Shirts", "Tshirts", "Watches"], "baseColour": ["Black", "Red", "Blue", "White"]}


def model_config(resolution=32, g_blocks="plain"):
    return {"vocab": VOCAB, "resolution": resolution, "z_dim": 16, "embed_dim": 8, "g_channels": 32, "d_channels": 8,
            "g_blocks": g_blocks}


def attrs(n, a=0, b=0):
    return {"articleType": torch.full((n,), a), "baseColour": torch.full((n,), b)}


@pytest.mark.parametrize("g_blocks", ["plain", "residual"])
@pytest.mark.parametrize("resolution", [8, 32, 64])
def test_shapes(resolution, g_blocks):
    generator = build_generator(model_config(resolution, g_blocks))
    discriminator = build_discriminator(model_config(resolution))
    images = generator(torch.randn(5, 16), attrs(5))
    assert images.shape == (5, 3, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1
    assert discriminator(images, attrs(5)).shape == (5,)


def test_bad_resolution_and_missing_attribute():
    with pytest.raises(ValueError, match="power of two"):
        build_generator(model_config(48))
    with pytest.raises(KeyError, match="baseColour"):
        build_generator(model_config())(torch.randn(2, 16), {"articleType": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(ValueError, match="unknown generator blocks 'dense'"):
        build_generator(model_config(g_blocks="dense"))


def test_exports_from_before_g_blocks_build_the_plain_generator():
    config = model_config()
    del config["g_blocks"]
    assert not build_generator(config).residual
    assert build_generator(model_config(g_blocks="residual")).residual


@pytest.mark.parametrize("g_blocks", ["plain", "residual"])
def test_changing_either_attribute_changes_the_output(g_blocks):
    torch.manual_seed(0)
    generator = build_generator(model_config(g_blocks=g_blocks)).eval()
    # Conditional BN starts as plain BN (zero-initialised gains): give the condition some weight.
    with torch.no_grad():
        for module in generator.modules():
            if isinstance(module, torch.nn.Linear) and module.out_features != generator.stem.out_features:
                module.weight.normal_(0, 0.5)
    z = torch.randn(4, 16)
    base = generator(z, attrs(4, 0, 0))
    assert (generator(z, attrs(4, 1, 0)) - base).abs().mean() > 1e-3
    assert (generator(z, attrs(4, 0, 2)) - base).abs().mean() > 1e-3
    assert torch.equal(generator(z, attrs(4, 0, 0)), base)  # eval mode: deterministic


@pytest.mark.parametrize("kind", ["hinge", "nonsaturating"])
def test_loss_signs(kind):
    confident = d_loss(torch.full((8,), 3.0), torch.full((8,), -3.0), kind)
    fooled = d_loss(torch.full((8,), -3.0), torch.full((8,), 3.0), kind)
    assert confident < fooled
    assert g_loss(torch.full((8,), 3.0), kind) < g_loss(torch.full((8,), -3.0), kind)
    if kind == "hinge":
        assert confident == 0  # margins met: no loss
    with pytest.raises(ValueError, match="unknown GAN loss"):
        d_loss(torch.zeros(1), torch.zeros(1), "wasserstein")


def test_discriminator_learns_to_separate_real_from_fake():
    torch.manual_seed(0)
    discriminator = build_discriminator(model_config(8))
    optimizer = torch.optim.Adam(discriminator.parameters(), 1e-3)
    real, fake = torch.rand(16, 3, 8, 8) * 0.2 + 0.7, torch.rand(16, 3, 8, 8) * 0.2 - 0.9
    both = {k: torch.cat([v, v]) for k, v in attrs(16).items()}
    losses = []
    for _ in range(30):
        scores = discriminator(torch.cat([real, fake]), both)
        loss = d_loss(scores[:16], scores[16:], "nonsaturating")  # hinge can start at 0 (margins met)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    scores = discriminator(torch.cat([real, fake]), both)
    assert losses[-1] < losses[0]
    assert scores[:16].mean() > scores[16:].mean()


def test_r1_penalty_matches_a_hand_gradient():
    images = torch.randn(3, 3, 4, 4, requires_grad=True)
    scores = (images ** 2).sum(dim=(1, 2, 3))  # d score / d x = 2x
    expected = (2 * images.detach()).pow(2).flatten(1).sum(1).mean()
    assert torch.allclose(r1_penalty(scores, images), expected)


def test_minibatch_stddev_sees_a_collapsed_batch():
    layer = MinibatchStddev(group=4)
    varied = torch.randn(8, 5, 4, 4)
    collapsed = varied[:1].expand(8, 5, 4, 4)
    assert layer(varied).shape == (8, 6, 4, 4)
    assert torch.allclose(layer(varied)[:, :5], varied)  # features pass through unchanged
    assert layer(collapsed)[:, 5].abs().max() < 1e-3  # identical samples: no spread
    assert layer(varied)[:, 5].min() > 0.3  # N(0, 1) features: a spread near 1
    assert layer(torch.randn(6, 5, 4, 4)).shape == (6, 6, 4, 4)  # group 4 does not divide 6: groups of 2
    config = {**model_config(), "d_mbstd_group": 4}
    assert build_discriminator(config)(torch.randn(8, 3, 32, 32), attrs(8)).shape == (8,)


def test_mode_seeking_loss_falls_as_paired_images_differ():
    noise = torch.randn(8, 16)
    same = torch.zeros(8, 3, 4, 4)
    apart = torch.cat([torch.zeros(4, 3, 4, 4), torch.ones(4, 3, 4, 4)])
    assert mode_seeking_loss(apart, noise) < mode_seeking_loss(same, noise)
    # the hand formula: 1 / mean_pairs(|x1 - x2| / |z1 - z2|)
    gap = (noise[:4] - noise[4:]).abs().mean(1)
    assert torch.allclose(mode_seeking_loss(apart, noise), 1 / (1 / gap).mean(), rtol=1e-4)


def test_classifying_discriminator_returns_logits_per_attribute():
    discriminator = build_discriminator(model_config(8), classify=True)
    scores, logits = discriminator(torch.randn(5, 3, 8, 8), attrs(5))
    assert scores.shape == (5,)
    assert {name: tuple(v.shape) for name, v in logits.items()} == {"articleType": (5, 3), "baseColour": (5, 4)}


def test_class_loss_falls_as_logits_agree_with_the_attributes():
    labels = {"articleType": torch.tensor([0, 2]), "baseColour": torch.tensor([3, 1])}
    right = {name: torch.nn.functional.one_hot(v, n).float() * 5 for (name, v), n in zip(labels.items(), (3, 4))}
    wrong = {name: v.roll(1, dims=0) for name, v in right.items()}
    assert class_loss(right, labels) < class_loss({k: torch.zeros_like(v) for k, v in right.items()}, labels)
    assert class_loss(wrong, labels) > class_loss({k: torch.zeros_like(v) for k, v in right.items()}, labels)
    # the hand formula: mean over attributes of the cross-entropy; uniform logits give log(classes)
    uniform = {k: torch.zeros_like(v) for k, v in right.items()}
    assert class_loss(uniform, labels).item() == pytest.approx((np.log(3) + np.log(4)) / 2, rel=1e-5)


def test_augmentation_is_seeded_differentiable_and_shape_preserving():
    policy = parse_policy("color,translation,cutout")
    x = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_(True)
    a = diff_augment(x, policy, torch.Generator().manual_seed(1))
    b = diff_augment(x, policy, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, diff_augment(x, policy, torch.Generator().manual_seed(2)))
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown augmentation"):
        parse_policy("translation,mixup")


def test_translation_moves_content_by_whole_pixels():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4, 4] = 1
    shifted = diff_augment(x, ["translation"], torch.Generator().manual_seed(3))
    assert shifted.sum() == 1  # one bright pixel, somewhere within 1 px (8 * 0.125)
    row, col = [int(v) for v in torch.nonzero(shifted[0, 0])[0]]
    assert abs(row - 4) <= 1 and abs(col - 4) <= 1


def test_resume_takes_the_configs_learning_rate_not_the_checkpoints(tmp_path):
    generator = build_generator(model_config(8))
    saved = {"g": torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999))}
    (tmp_path / "opt.pt").write_bytes(ckpt_io.state_bytes({"g": saved["g"].state_dict()}))
    resumed = {"g": torch.optim.Adam(generator.parameters(), lr=5e-5, betas=(0.0, 0.99))}  # the new config
    resumed["g"].load_state_dict(ckpt_io.load_state_bytes((tmp_path / "opt.pt").read_bytes())["g"])
    assert resumed["g"].param_groups[0]["lr"] == 2e-4  # what load_state_dict alone leaves
    changes = apply_configured_hyperparameters(resumed, {"g": {"lr": 5e-5, "betas": (0.0, 0.99)}})
    assert resumed["g"].param_groups[0]["lr"] == 5e-5 and resumed["g"].param_groups[0]["betas"] == (0.0, 0.99)
    assert changes == ["g.lr 0.0002 -> 5e-05", "g.betas (0.5, 0.999) -> (0.0, 0.99)"]
    assert apply_configured_hyperparameters(resumed, {"g": {"lr": 5e-5}}) == []


def test_lr_decay_is_flat_then_linear_to_the_final_fraction():
    assert linear_decay_factor(500_000, None, 600_000, 0.0) == 1.0  # no decay configured
    assert linear_decay_factor(440_000, 440_000, 600_000, 0.0) == 1.0
    assert linear_decay_factor(520_000, 440_000, 600_000, 0.0) == pytest.approx(0.5)
    assert linear_decay_factor(520_000, 440_000, 600_000, 0.2) == pytest.approx(0.6)
    assert linear_decay_factor(600_000, 440_000, 600_000, 0.1) == pytest.approx(0.1)
    assert linear_decay_factor(700_000, 440_000, 600_000, 0.1) == pytest.approx(0.1)  # held past the end


def test_grid_rows_cover_several_combinations():
    rows = grid_conditions(VOCAB)
    assert len(rows) == 4  # min(10, longest vocabulary)
    assert {r["articleType"] for r in rows} == {0, 1, 2}
    assert len({(r["articleType"], r["baseColour"]) for r in rows}) == 4


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    cfg = model_config(16)
    model_id = ckpt_io.export_model(str(tmp_path / "export"), "generator", build_generator(cfg).eval(),
                                    {**cfg, "kind": "generator"})
    return str(tmp_path / "export"), model_id


def test_generator_export_loads_and_same_seed_gives_same_image(exported):
    folder, model_id = exported
    generator = ProductGenerator.load(folder)
    assert generator.model_id == model_id and generator.resolution == 16
    request = {"articleType": "Watches", "baseColour": "Red"}
    first = generator.generate(request, n=3, seed=42)
    assert len(first) == 3 and first[0].shape == (16, 16, 3) and first[0].dtype == np.uint8
    assert all(np.array_equal(a, b) for a, b in zip(first, generator.generate(request, n=3, seed=42)))
    assert np.array_equal(generator.generate(request, n=1, seed=42)[0], first[0])  # independent of n
    assert not np.array_equal(generator.generate(request, n=1, seed=43)[0], first[0])


def test_generator_rejects_unknown_attributes_and_seeds(exported):
    generator = ProductGenerator.load(exported[0])
    with pytest.raises(UnknownAttribute, match="unknown baseColour 'Mauve'"):
        generator.generate({"articleType": "Watches", "baseColour": "Mauve"})
    with pytest.raises(UnknownAttribute, match="unknown attribute"):
        generator.generate({"articleType": "Watches", "baseColour": "Red", "size": "XL"})
    with pytest.raises(UnknownAttribute, match="missing"):
        generator.generate({"articleType": "Watches"})
    with pytest.raises(ValueError, match="seed"):
        generator.generate({"articleType": "Watches", "baseColour": "Red"}, seed=-1)


def test_truncation_bounds_the_noise_and_is_seeded(exported):
    generator = ProductGenerator.load(exported[0])
    cut = generator.noise(4000, seed=5, truncation=0.5)
    assert cut.shape == (4000, generator.z_dim) and cut.abs().max() <= 0.5
    assert cut.std() < 0.3  # a normal cut at +-0.5 has std 0.28, the plain draws 1.0
    assert torch.equal(cut, generator.noise(4000, seed=5, truncation=0.5))
    assert not torch.equal(cut, generator.noise(4000, seed=6, truncation=0.5))
    assert generator.noise(4000, seed=5).abs().max() > 3  # untruncated: the plain normal draws
    request = {"articleType": "Watches", "baseColour": "Red"}
    tight = generator.generate(request, n=2, seed=1, truncation=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(tight, generator.generate(request, n=2, seed=1, truncation=0.5)))
    assert not np.array_equal(tight[0], generator.generate(request, n=1, seed=1)[0])
    for bad in (0, -1.0, 4.5, float("nan"), True):
        with pytest.raises(ValueError, match="truncation"):
            generator.noise(1, seed=0, truncation=bad)


def test_enhancer_export_is_not_a_generator(tmp_path):
    from prodray.enhancer.model import build_model
    ckpt_io.export_model(str(tmp_path), "enhancer", build_model("rpsnet", scale=2, channels=8, blocks=1),
                         {"kind": "enhancer", "arch": "rpsnet", "scale": 2, "channels": 8, "blocks": 1,
                          "vocab": {}, "resolution": 8, "z_dim": 1, "embed_dim": 1, "g_channels": 8})
    with pytest.raises(ValueError, match="not a generator"):
        ProductGenerator.load(str(tmp_path))


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="optim.augment"):
        load_config(GanTrainConfig, None, ["data.prepared=x", "optim.augment=mixup"])
    with pytest.raises(ConfigError, match="data.prepared"):
        load_config(GanTrainConfig, None, [f"data.prepared={tmp_path}/missing"]).resolved()
    with pytest.raises(ConfigError, match="optim.loss"):
        load_config(GanTrainConfig, None, ["data.prepared=x", "optim.loss=wgan"])
    with pytest.raises(ConfigError, match="model.g_blocks"):
        load_config(GanTrainConfig, None, ["data.prepared=x", "model.g_blocks=dense"])
    with pytest.raises(ConfigError, match="optim.lr_decay_from_images"):
        load_config(GanTrainConfig, None, ["data.prepared=x", "optim.total_images=1000",
                                           "optim.lr_decay_from_images=1000"])
