"""Pretrained embedding networks, rebuilt with the exact parameter names of their published weights.

- `VGGish`: the torch port of Google's VGGish (Hershey et al. 2017) in the layout of harritaylor/torchvggish
  (`features.{0,3,6,8,11,13}`, `embeddings.{0,2,4}`, optional `pproc.pca_matrix/pca_means`).
- `Cnn14_16k`: PANNs Cnn14 at 16 kHz (Kong et al. 2020) in the layout of qiuqiangkong/audioset_tagging_cnn,
  including its torchlibrosa front end (`spectrogram_extractor.stft.conv_{real,imag}.weight`,
  `logmel_extractor.melW`), so the STFT kernels and mel matrix come from the checkpoint itself.
- `AisfxNet`: the sound-effects CNN of the aisfx package (Ma et al., ISMIR 2022; DCASE cross-task 9-layer
  CNN), parameter names `embedding_net.conv_block{1..4}.*` of the shipped checkpoint.

All modules are inference-only (eval mode, no dropout, no SpecAugment). Front ends are in
`eval.frontends`; these modules take the already-computed features (or the waveform for Cnn14).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

# ------------------------------------------------------------------------------------------ VGGish


class VGGish(nn.Module):
    """(B, 1, 96, 64) log-mel patches (0.96 s) -> (B, 128) embeddings.

    `drop_last_relu=True` returns the 128-d layer before its final ReLU, which is what the common FAD tools
    (frechet_audio_distance, fadtk) use; PCA/quantisation post-processing is never applied for FAD.
    """

    def __init__(self, drop_last_relu: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for spec in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(spec), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(spec)
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(True), nn.Linear(4096, 4096),
                                        nn.ReLU(True), nn.Linear(4096, 128), nn.ReLU(True))
        self.drop_last_relu = drop_last_relu

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        x = self.features(patches)  # (B, 512, 6, 4)
        # the TF original flattens channels-last (B, 6, 4, 512); keep that order for the ported weights
        x = rearrange(x, "b c h w -> b (h w c)")
        layers = list(self.embeddings.children())
        if self.drop_last_relu:
            layers = layers[:-1]
        for layer in layers:
            x = layer(x)
        return x


# ------------------------------------------------------------------------------------ PANNs Cnn14


class _ConvBlock(nn.Module):
    """Two 3x3 conv + BN + ReLU, then pooling (the block of PANNs and of the DCASE cross-task CNN)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor, pool_size: tuple[int, int], pool: str) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        if pool == "avg":
            return F.avg_pool2d(x, kernel_size=pool_size)
        return F.max_pool2d(x, kernel_size=pool_size)


class _ConvSTFT(nn.Module):
    """torchlibrosa's STFT as two Conv1d whose kernels are window x DFT (loaded from the checkpoint)."""

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        bins = n_fft // 2 + 1
        self.n_fft = n_fft
        self.conv_real = nn.Conv1d(1, bins, kernel_size=n_fft, stride=hop_length, bias=False)
        self.conv_imag = nn.Conv1d(1, bins, kernel_size=n_fft, stride=hop_length, bias=False)


class _Spectrogram(nn.Module):
    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.stft = _ConvSTFT(n_fft, hop_length)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, T) -> power spectrogram (B, 1, frames, bins); centred frames, reflect padding."""
        pad = self.stft.n_fft // 2
        x = F.pad(wav[:, None, :], (pad, pad), mode="reflect")
        real, imag = self.stft.conv_real(x), self.stft.conv_imag(x)  # (B, bins, frames)
        return rearrange(real**2 + imag**2, "b f t -> b 1 t f")


class _LogmelFilterBank(nn.Module):
    def __init__(self, bins: int, n_mels: int, amin: float = 1e-10) -> None:
        super().__init__()
        self.melW = nn.Parameter(torch.zeros(bins, n_mels), requires_grad=False)
        self.amin = amin

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        # power_to_db with ref=1.0 and no top_db clipping, as the 16 kHz Cnn14 was trained
        return 10.0 * torch.log10(torch.clamp(power @ self.melW, min=self.amin))


class Cnn14_16k(nn.Module):
    """PANNs Cnn14 for 16 kHz audio: wav (B, T) -> (embedding (B, 2048), logits (B, 527)).

    Front end: n_fft 512, hop 160, 64 mel bands 50-8000 Hz (from the checkpoint's `melW`), dB scale.
    Logits are pre-sigmoid (the reference model reports sigmoid(logits) as clipwise_output).
    """

    sample_rate = 16_000

    def __init__(self, classes_num: int = 527, n_fft: int = 512, hop_length: int = 160, n_mels: int = 64) -> None:
        super().__init__()
        self.spectrogram_extractor = _Spectrogram(n_fft, hop_length)
        self.logmel_extractor = _LogmelFilterBank(n_fft // 2 + 1, n_mels)
        self.bn0 = nn.BatchNorm2d(n_mels)
        widths = (1, 64, 128, 256, 512, 1024, 2048)
        for i in range(6):
            self.add_module(f"conv_block{i + 1}", _ConvBlock(widths[i], widths[i + 1]))
        self.fc1 = nn.Linear(2048, 2048, bias=True)
        self.fc_audioset = nn.Linear(2048, classes_num, bias=True)

    def forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.logmel_extractor(self.spectrogram_extractor(wav))  # (B, 1, frames, mels)
        x = rearrange(self.bn0(rearrange(x, "b 1 t m -> b m t 1")), "b m t 1 -> b 1 t m")  # BN per mel band
        for i in range(6):
            block = getattr(self, f"conv_block{i + 1}")
            x = block(x, pool_size=(2, 2) if i < 5 else (1, 1), pool="avg")
        x = x.mean(dim=3)  # (B, 2048, frames')
        x = x.max(dim=2).values + x.mean(dim=2)
        embedding = F.relu(self.fc1(x))
        return embedding, self.fc_audioset(embedding)


# ------------------------------------------------------------------------------------------- aisfx


class _AisfxEmbeddingNet(nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        widths = (1, width, width * 2, width * 4, width * 8)
        for i in range(4):
            self.add_module(f"conv_block{i + 1}", _ConvBlock(widths[i], widths[i + 1]))


class AisfxNet(nn.Module):
    """(B, 100, 96) normalised log-mel blocks (~2.3 s at 44.1 kHz) -> (B, 512) embeddings.

    Max pooling in the blocks, mean over mel bands, max over time (the package's `EmbeddingNet('max', 3, 1, 64)`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.embedding_net = _AisfxEmbeddingNet()

    def forward(self, blocks: torch.Tensor) -> torch.Tensor:
        x = blocks[:, None]  # (B, 1, time, mels)
        net = self.embedding_net
        for i in range(4):
            x = getattr(net, f"conv_block{i + 1}")(x, pool_size=(2, 2) if i < 3 else (1, 1), pool="max")
        return x.mean(dim=3).max(dim=2).values
