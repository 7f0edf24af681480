"""The enhancer's adversarial fine-tuning stage, pure parts: discriminators, GAN and perceptual
losses, the `adversarial:` config section. (The Ray Train run is in test_enhancer_adversarial_ray.py.)"""

import json

import pytest
import torch

from prodray.config import AdversarialTrainConfig, ConfigError, EnhancerTrainConfig, load_config
from prodray.enhancer.discriminator import PatchDiscriminator, UNetDiscriminator, build_discriminator
from prodray.enhancer.losses import EdgeLoss, VGGPerceptualLoss, _read_state_dict, build_perceptual
from prodray.gan.losses import d_loss, g_loss
from prodray.io import artifacts as ckpt_io


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions: more threads only add contention (tens of times slower on a busy 2-core box).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- discriminators

@pytest.mark.parametrize("height,width", [(32, 32), (48, 40), (30, 26)])
def test_unet_discriminator_scores_every_pixel(height, width):
    d = UNetDiscriminator(channels=8)
    assert d(torch.rand(2, 3, height, width)).shape == (2, 1, height, width)


def test_patch_discriminator_scores_a_grid_of_patches():
    d = PatchDiscriminator(channels=8)
    assert d(torch.rand(2, 3, 64, 64)).shape == (2, 1, 8, 8)
    assert d(torch.rand(1, 3, 48, 32)).shape == (1, 1, 6, 4)


@pytest.mark.parametrize("kind", ["unet", "patch"])
def test_discriminators_use_spectral_norm(kind):
    d = build_discriminator(kind, 8)
    normed = [m for m in d.modules() if hasattr(m, "parametrizations") and "weight" in m.parametrizations]
    assert len(normed) >= 3
    # Spectral norm bounds each normalised layer's largest singular value by ~1.
    for conv in normed:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma < 1.5
    with pytest.raises(ValueError, match="unknown discriminator"):
        build_discriminator("mlp", 8)


# ---------------------------------------------------------------- GAN losses

def test_hinge_sign_conventions():
    confident = d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0), "hinge")
    fooled = d_loss(torch.full((4,), -1.0), torch.full((4,), 1.0), "hinge")
    assert confident.item() == 0.0 and fooled.item() == pytest.approx(4.0)
    # The enhancer's loss falls as the discriminator rates its output more real.
    assert g_loss(torch.full((4,), 1.0), "hinge") < g_loss(torch.full((4,), -1.0), "hinge")


def test_nonsaturating_sign_conventions():
    good = d_loss(torch.full((4,), 3.0), torch.full((4,), -3.0), "nonsaturating")
    bad = d_loss(torch.full((4,), -3.0), torch.full((4,), 3.0), "nonsaturating")
    assert 0 < good < bad
    assert g_loss(torch.full((4,), 3.0), "nonsaturating") < g_loss(torch.full((4,), -3.0), "nonsaturating")
    with pytest.raises(ValueError):
        d_loss(torch.zeros(1), torch.zeros(1), "wasserstein")


@pytest.mark.parametrize("kind", ["unet", "patch"])
def test_discriminator_learns_to_tell_sharp_from_blurred(kind):
    """Toy case: 'real' = sharp checkerboards, 'fake' = the same blurred. A few hinge steps make
    the discriminator's loss fall and its logits higher on real than on fake."""
    torch.manual_seed(0)
    d = build_discriminator(kind, 8)
    optimizer = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.99))
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    board = (((yy // 4) + (xx // 4)) % 2).float()
    real = board.expand(2, 3, 32, 32).clone()
    fake = torch.nn.functional.avg_pool2d(real, 5, stride=1, padding=2, count_include_pad=False)
    losses = []
    for _ in range(25):
        real_logits, fake_logits = d(torch.cat([real, fake])).chunk(2)
        loss = d_loss(real_logits, fake_logits, "hinge")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    d.eval()
    with torch.no_grad():
        assert d(real).mean() > d(fake).mean()
    assert sum(losses[-5:]) / 5 < losses[0]


# ---------------------------------------------------------------- perceptual

def test_edge_loss_is_zero_on_identity_and_prefers_sharp_output():
    torch.manual_seed(0)
    loss = EdgeLoss()
    target = torch.rand(2, 3, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(target, 3, stride=1, padding=1, count_include_pad=False)
    assert loss(target, target).item() == 0.0
    assert loss(blurred, target) > loss(target + 0.01, target)  # blur costs more than a faint shift
    prediction = blurred.clone().requires_grad_(True)
    loss(prediction, target).backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0


def test_default_perceptual_is_the_offline_edge_loss():
    module, description = build_perceptual(None)
    assert isinstance(module, EdgeLoss) and description.startswith("edge")


def test_vgg_perceptual_loads_a_user_weights_file(tmp_path):
    """The VGG19 path runs only on a supplied torchvision state dict; nothing is downloaded."""
    from torchvision.models import vgg19
    torch.manual_seed(0)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in vgg19(weights=None).features.state_dict().items()}
    state = {f"features.{k}": torch.randn(shape) * 0.05 for k, shape in shapes.items()}
    state["classifier.0.bias"] = torch.zeros(4)  # ignored
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    module, description = build_perceptual(path.read_bytes(), str(path))
    assert isinstance(module, VGGPerceptualLoss) and "vgg19" in description
    assert not any(p.requires_grad for p in module.parameters())
    x, y = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    assert module(x, x).item() == 0.0 and module(x, y).item() > 0
    assert set(_read_state_dict(path.read_bytes(), str(path))) == set(state)


# ---------------------------------------------------------------- config

def adversarial_config(tmp_path, *extra):
    return load_config(AdversarialTrainConfig, None, [f"data.sources=[{tmp_path}]", "adversarial.init_from=enhancer-x2",
                                                      *extra])


def test_adversarial_section_is_the_stage_and_validated(tmp_path):
    with pytest.raises(ConfigError, match="adversarial"):  # the PSNR stage has no such section
        load_config(EnhancerTrainConfig, None, [f"data.sources=[{tmp_path}]", "adversarial.init_from=enhancer-x2"])
    cfg = adversarial_config(tmp_path)
    assert cfg.adversarial.export_name == "enhancer-gan" and cfg.adversarial.discriminator == "unet"
    assert cfg.adversarial.vgg19_weights is None
    with pytest.raises(ConfigError, match="adversarial.discriminator"):
        adversarial_config(tmp_path, "adversarial.discriminator=mlp")
    with pytest.raises(ConfigError, match="adversarial.adversarial_weight"):
        adversarial_config(tmp_path, "adversarial.adversarial_weight=-1")
    with pytest.raises(ConfigError, match="adversarial.init_from"):
        load_config(AdversarialTrainConfig, None, [f"data.sources=[{tmp_path}]", "adversarial.export_name=x"])


def test_resolved_keeps_shipped_names_and_checks_paths(tmp_path):
    assert adversarial_config(tmp_path).resolved().adversarial.init_from == "enhancer-x2"
    with pytest.raises(ConfigError, match="adversarial.init_from"):
        load_config(AdversarialTrainConfig, None, [f"data.sources=[{tmp_path}]",
                                                   f"adversarial.init_from={tmp_path}/missing"]).resolved()
    with pytest.raises(ConfigError, match="adversarial.vgg19_weights"):
        adversarial_config(tmp_path, f"adversarial.vgg19_weights={tmp_path}/vgg.pth").resolved()


def test_init_model_must_match_the_model_section(tmp_path):
    from prodray.enhancer.training import AdversarialTraining
    check_init_model = AdversarialTraining.prepare
    shipped = json.loads((ckpt_io.SHIPPED_DIR / "enhancer-x2" / "config.json").read_text())
    cfg = adversarial_config(tmp_path, f"model.channels={shipped['channels']}", f"model.blocks={shipped['blocks']}")
    assert check_init_model(cfg)["init_model_id"] == shipped["model_id"]
    with pytest.raises(ConfigError, match="model.channels"):
        check_init_model(adversarial_config(tmp_path, "model.channels=16"))
    with pytest.raises(ConfigError, match="adversarial.export_name"):
        check_init_model(adversarial_config(tmp_path, f"adversarial.export_name={shipped['name']}"))


def test_psnr_init_from_is_checked_before_any_work(tmp_path):
    from prodray.training import read_init_model
    base = [f"data.sources=[{tmp_path}]"]
    cfg = load_config(EnhancerTrainConfig, None, [*base, "init_from=enhancer-x4", "model.scale=4"]).resolved()
    assert cfg.init_from == "enhancer-x4"  # shipped names pass through
    assert read_init_model(cfg.init_from, "init_from", cfg.model)["scale"] == 4
    with pytest.raises(ConfigError, match="model.scale"):
        read_init_model("enhancer-x4", "init_from", load_config(EnhancerTrainConfig, None, base).model)
    with pytest.raises(ConfigError, match="init_from"):
        load_config(EnhancerTrainConfig, None, [*base, f"init_from={tmp_path}/missing"]).resolved()
    with pytest.raises(ConfigError, match="init_from"):  # the adversarial stage has its own
        adversarial_config(tmp_path, "init_from=enhancer-x2")
