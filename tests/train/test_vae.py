"""Latent training through a local diffusers AutoencoderKL (tiny random VAE saved to disk)."""
import pytest
import torch
from train_helpers import tiny_args, tiny_config, tiny_model

from sgkernels.train import Trainer
from sgkernels.model.checkpoint import read_checkpoint
from sgkernels.train.vae import decode, encode, load_vae


def test_missing_vae_folder_names_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.json.*diffusion_pytorch_model"):
        load_vae(tmp_path / "no-vae")


def _tiny_vae(path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                                  block_out_channels=(8, 8), layers_per_block=1,
                                  down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4)
    vae.save_pretrained(path)
    return path


def test_encode_is_per_sample_and_decodes_to_images(tmp_path):
    vae = load_vae(_tiny_vae(tmp_path / "vae"))
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    z = encode(vae, x, 0.5, seed=1, positions=range(4))
    assert z.shape == (4, 4, 4, 4)
    torch.testing.assert_close(encode(vae, x[2:], 0.5, seed=1, positions=range(2, 4)), z[2:])
    assert not torch.equal(encode(vae, x, 0.5, seed=2, positions=range(4)), z)
    img = decode(vae, z, 0.5)
    assert img.shape == (4, 3, 8, 8) and img.abs().max() <= 1


def test_latent_training_run(tmp_path):
    path = _tiny_vae(tmp_path / "vae")
    cfg = tiny_config(in_channels=4, input_size=4)
    args = tiny_args(tmp_path / "run", steps=2, sample_every=2, vae=str(path), latent_scale=0.5)
    trainer = Trainer(args, tiny_model(cfg))
    assert trainer.data.shape == (1, 8, 8)  # pixels at input_size x 2 (the VAE's downsampling)
    trainer.run()
    assert read_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")["step"] == 2
    assert (tmp_path / "run" / "samples" / "0000002.png").exists()
