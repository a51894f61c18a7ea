"""The original LRA IGLOO model (redna11/lra-igloo: `IGLOO1D_BLOCK` with the v1 kernel), rebuilt
so that its published numbers can be checked at matched parameters. A whole network, not a mixer:
`model=igloo_lra` replaces the shared encoder and LRA's head (the task's `encoder` block is unused
except for `max_len`).

    tokens [B, n] -> right-padded to max_len (n is fixed, as lra-igloo's `cutoff`)
    X = Embedding(tokens) [n, E], or the token's value / value_scale as one channel (CIFAR)
    for s = 1..stacks:  H_s = SpatialDropout(LeakyReLU_0.1(Conv1d_k(H_{s-1}))), H_0 = X   [n, K]
    kernels read H_1 and, when stacks > 1, H_stacks (lra-igloo's loop: two kernels for any
    stacks > 1); each kernel has its own table patches [P, ps]: ps sorted distinct timesteps
    drawn uniformly over the whole sequence
        H' = H W_in                                                    [n, d'] (d' = K if no W_in)
        z_p = Σ_l Σ_c W_mult[p, l, c] · W_sum[l, c] · H'[patches[p, l], c] + bias[p]     [P]
        features = LeakyReLU_0.1(z)                                                      [P]
        transformer_style: a = softmax_t(z W_qk) over the n/r max-pooled positions,
                           features = a · MaxPool_r(H W_v)                               [K]
    concatenated over kernels -> (BatchNorm) -> (Dense(h) -> ReLU) -> Dropout -> Dense(num_classes)
    Retrieval with towers: unshared (lra-igloo's longrangearena_matching.py): one embedding, two
    towers of convs and kernels (one per document), the head over [u, v, u - v, u * v]

Parameters per kernel: P·ps·d' + ps·d' + P (+ K·d' with an input projection), plus K² + P·(n/r)
with transformer_style; plus the convs, the embedding and the head. lra-igloo's CIFAR settings
(P=4000, K=5, conv kernel 1, ps=4, BatchNorm, Dense(10), grey pixels as one channel) give
132,040 trainable parameters.

Keras' settings, for rerunning lra-igloo's scripts (conf/experiment/repro/igloo_*.yaml):
- `bn_eps`, `bn_momentum`: the head's BatchNorm in PyTorch's convention (running = (1 - m) running +
  m batch); Keras' BatchNormalization defaults are eps 1e-3, momentum 0.99, i.e. m = 0.01 here;
- `init: keras`: Embedding U(-0.05, 0.05), Conv1D and Dense glorot_uniform with zero bias, and
  W_mult with Keras' fans for its 4-d weight (1, P, ps, d'): fan_in = P ps, fan_out = P d'
  (`init: torch`: PyTorch's defaults for the embedding, convs and Dense, W_mult's fans ps d', P);
- `l2`: c of Keras' `l2(c)` on every IGLOO kernel weight (c Σw² in the loss; lra-igloo puts it on
  the kernels only, never on the convs, embedding or head): `decay_groups()` hands those weights to
  the optimiser with coupled weight decay 2c (task.optim.optimizer=adam);
- `spatial_dropout: false`: plain Dropout after the convs (lra-igloo's ListOps script);
- `value_channels`: with embedding_dim null, the value repeated over that many channels
  (lra-igloo's Pathfinder reads the grey PNG as 3 equal BGR channels).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lra.models.classifier import PairHead, SequenceClassifier, TwoTowerClassifier
from lra.models.encoder import PAD_ID
from lra.registry import ARCHITECTURES


def patch_table(n: int, P: int, ps: int, g: torch.Generator) -> torch.Tensor:
    """[P, ps]: each row ps distinct timesteps of [0, n), uniform, sorted (lra-igloo's table)."""
    if torch.get_default_device().type == "meta":  # counting parameters: the table is not needed
        return torch.empty(P, ps, dtype=torch.long)
    return torch.rand(P, n, generator=g).topk(ps, dim=-1).indices.sort(dim=-1).values


def glorot(*shape: int, fan_in: int, fan_out: int) -> nn.Parameter:
    limit = math.sqrt(6 / (fan_in + fan_out))
    return nn.Parameter(torch.empty(shape).uniform_(-limit, limit))


def keras_fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Keras' glorot fans: for more than 2 dims, the last two times the product of the others."""
    field = math.prod(shape[:-2])
    return shape[-2] * field, shape[-1] * field


INITS = ("torch", "keras")


def keras_init(net: nn.Module) -> None:
    """Keras' default initialisers, in place: Embedding U(-0.05, 0.05); Conv1D and Dense
    glorot_uniform with zero bias; W_mult with Keras' fans (the other kernel weights have them
    already)."""
    for m in net.modules():
        if isinstance(m, nn.Embedding):
            nn.init.uniform_(m.weight, -0.05, 0.05)
        elif isinstance(m, nn.Conv1d | nn.Linear):
            nn.init.xavier_uniform_(m.weight)  # torch's fans of [out, in, k] = Keras' of [k, in, out]
            nn.init.zeros_(m.bias)
        elif isinstance(m, IglooKernel):
            P, ps, d = m.W_mult.shape
            fan_in, fan_out = keras_fans((1, P, ps, d))  # Keras' W_MULT is [1, P, ps, d']
            limit = math.sqrt(6 / (fan_in + fan_out))
            nn.init.uniform_(m.W_mult, -limit, limit)


class IglooKernel(nn.Module):
    """lra-igloo's `IGLOO1D_KERNEL` (v1): [B, n, K] -> [B, P] (or [B, K] with transformer_style)."""

    def __init__(
        self,
        n: int,
        K: int,
        P: int,
        ps: int,
        incoming_proj: int,
        transformer_style: bool,
        pooling_size: int,
        g: torch.Generator,
    ) -> None:
        super().__init__()
        d = incoming_proj or K  # d'
        self.register_buffer("patches", patch_table(n, P, ps, g))  # [P, ps]
        self.W_in = glorot(K, d, fan_in=K, fan_out=d) if incoming_proj else None
        self.W_mult = glorot(P, ps, d, fan_in=ps * d, fan_out=P)
        self.W_sum = glorot(ps, d, fan_in=ps * d, fan_out=1)  # lra-igloo's W_SUMMER [ps·d', 1]
        self.bias = glorot(P, fan_in=1, fan_out=P)
        self.transformer_style = transformer_style
        self.pooling_size = pooling_size
        if transformer_style:
            self.W_qk = glorot(P, n // pooling_size, fan_in=P, fan_out=n // pooling_size)
            self.W_v = glorot(K, K, fan_in=K, fan_out=K)

    def forward(self, H: torch.Tensor) -> torch.Tensor:
        Hp = H if self.W_in is None else H @ self.W_in  # H' [B, n, d']
        # z_p = Σ_l Σ_c W_mult[p, l, c] W_sum[l, c] H'[patches[p, l], c] + bias[p]     [B, P]
        z = torch.einsum("bplc,plc->bp", Hp[:, self.patches], self.W_mult * self.W_sum) + self.bias
        if not self.transformer_style:
            return F.leaky_relu(z, 0.1)
        V = F.max_pool1d((H @ self.W_v).transpose(1, 2), self.pooling_size).transpose(1, 2)
        a = (z @ self.W_qk).softmax(dim=-1)  # [B, n/r]: attention over pooled positions
        return torch.einsum("bt,btk->bk", a, V)  # [B, K]


class IglooLRAEncoder(nn.Module):
    """tokens [B, n] -> the concatenated kernel features [B, features]."""

    def __init__(
        self,
        vocab_size: int,
        max_len: int,
        embedding_dim: int | None,
        value_scale: float,
        conv_filters: int,
        conv_kernel: int,
        padding: str,
        num_patches: int,
        patch_size: int,
        stacks: int,
        incoming_proj: int,
        transformer_style: bool,
        pooling_size: int,
        dropout: float,
        seed: int | None,
        spatial_dropout: bool = True,
        value_channels: int = 1,
    ) -> None:
        super().__init__()
        if padding not in ("causal", "same"):
            raise ValueError(f"igloo_lra: padding must be causal or same, not '{padding}'")
        if not 1 <= patch_size <= max_len:
            raise ValueError(
                f"igloo_lra: patch_size={patch_size} must be in [1, max_len={max_len}]"
            )
        self.max_len = max_len
        self.value_scale = value_scale
        self.value_channels = value_channels
        # embedding_dim null: the token's value as one real channel (lra-igloo's grey pixels / 255)
        self.embed = nn.Embedding(vocab_size, embedding_dim) if embedding_dim else None
        k = conv_kernel
        self.pad = (k - 1, 0) if padding == "causal" else ((k - 1) // 2, k // 2)
        widths = [embedding_dim or value_channels] + [conv_filters] * stacks
        self.convs = nn.ModuleList(nn.Conv1d(a, b, k) for a, b in zip(widths, widths[1:]))
        # Keras' SpatialDropout1D drops whole channels; its Dropout single values
        self.drop = nn.Dropout1d(dropout) if spatial_dropout else nn.Dropout(dropout)
        self.reads = sorted({0, stacks - 1})  # which H_s the kernels read
        if seed is None:
            seed = 0 if torch.get_default_device().type == "meta" else int(torch.randint(2**62, ()))
        g = torch.Generator().manual_seed(seed)
        self.kernels = nn.ModuleList(
            IglooKernel(
                max_len,
                conv_filters,
                num_patches,
                patch_size,
                incoming_proj,
                transformer_style,
                pooling_size,
                g,
            )  # fmt: skip
            for _ in self.reads
        )
        self.features = len(self.reads) * (conv_filters if transformer_style else num_patches)

    def mixers(self) -> list[nn.Module]:
        """What mixes positions: the convs and the IGLOO kernels."""
        return [*self.convs, *self.kernels]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        if n > self.max_len:
            raise ValueError(f"sequence of {n} tokens exceeds igloo_lra's max_len={self.max_len}")
        tokens = F.pad(tokens, (0, self.max_len - n), value=PAD_ID)
        if self.embed is None:
            X = tokens[..., None].float() / self.value_scale  # [B, n, 1]
            X = X.expand(-1, -1, self.value_channels)  # [B, n, value_channels]
        else:
            X = self.embed(tokens)  # [B, n, E]
        h = X.transpose(1, 2)  # channels first for Conv1d: [B, C, n]
        Hs = []
        for conv in self.convs:
            h = self.drop(F.leaky_relu(conv(F.pad(h, self.pad)), 0.1))
            Hs.append(h.transpose(1, 2))  # H_s [B, n, K]
        return torch.cat([kernel(Hs[s]) for kernel, s in zip(self.kernels, self.reads)], dim=-1)


HEAD_NORMS = ("batchnorm", "none")


class IglooLRAHead(nn.Sequential):
    """lra-igloo's heads: (BatchNorm) -> (Dense(hidden) -> ReLU) -> Dropout -> Dense(num_classes)
    (the softmax is in the loss). CIFAR and Pathfinder: BatchNorm, no hidden layer; IMDB:
    Dense(80); AAN: Dense(128), over [u, v, u - v, u * v]."""

    def __init__(
        self,
        features: int,
        num_classes: int,
        norm: str,
        dropout: float,
        hidden: int = 0,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        if norm not in HEAD_NORMS:
            raise ValueError(f"igloo_lra: head_norm='{norm}' is not one of {', '.join(HEAD_NORMS)}")
        layers: list[nn.Module] = []
        if norm == "batchnorm":  # momentum in PyTorch's convention: Keras' 0.99 is 0.01 here
            layers.append(nn.BatchNorm1d(features, eps=bn_eps, momentum=bn_momentum))
        else:
            layers.append(nn.Identity())  # keeps the Dense layers' indices (and checkpoints)
        if hidden:
            layers += [nn.Linear(features, hidden), nn.ReLU()]
        super().__init__(*layers, nn.Dropout(dropout), nn.Linear(hidden or features, num_classes))


class IglooLRAClassifier(SequenceClassifier):
    """SequenceClassifier whose IGLOO kernels carry lra-igloo's L2 penalty (`decay_groups`)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, l2: float) -> None:
        super().__init__(encoder, head)
        self.l2 = l2

    def decay_groups(self) -> list[dict[str, Any]]:
        """The weights lra-igloo regularises with Keras' l2(c) (c Σw² in the loss, gradient
        2c w): every IGLOO kernel weight, as a torch.optim param group with coupled weight decay
        2c. The rest of the network takes the task's weight_decay (the recipes: 0)."""
        return l2_groups(self.encoder.kernels, self.l2)


def l2_groups(kernels: Any, l2: float) -> list[dict[str, Any]]:
    if not l2:
        return []
    return [{"params": [p for k in kernels for p in k.parameters()], "weight_decay": 2 * l2}]


class IglooLRATowers(nn.Module):
    """Two unshared towers over one embedding (lra-igloo's `myembedding` feeds both): the
    second tower's `embed` is the first's."""

    def __init__(self, a: IglooLRAEncoder, b: IglooLRAEncoder) -> None:
        super().__init__()
        b.embed = a.embed
        self.towers = nn.ModuleList([a, b])
        self.features = a.features
        self.kernels = [*a.kernels, *b.kernels]

    def mixers(self) -> list[nn.Module]:
        return [*self.towers[0].mixers(), *self.towers[1].mixers()]


class IglooLRAPair(nn.Module):
    """lra-igloo's Retrieval model (longrangearena_matching.py): document 1 through tower a,
    document 2 through tower b, u, v [B, F] -> head([u, v, u - v, u * v]) [B, C]."""

    def __init__(self, encoder: IglooLRATowers, head: IglooLRAHead, l2: float) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.l2 = l2

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        a, b = self.encoder.towers
        u, v = a(batch["input_ids_1"]), b(batch["input_ids_2"])
        return self.head(torch.cat([u, v, u - v, u * v], dim=-1))

    def decay_groups(self) -> list[dict[str, Any]]:
        """As IglooLRAClassifier's: both towers' kernels, weight decay 2c."""
        return l2_groups(self.encoder.kernels, self.l2)


TOWERS = ("shared", "unshared")


@ARCHITECTURES.register("igloo_lra")
def build_igloo_lra(
    model_cfg: dict[str, Any],
    encoder_cfg: dict[str, Any],
    vocab_size: int,
    num_classes: int,
    head: str = "single",
    interaction: str = "nli",
) -> nn.Module:
    """`model.net` holds the options; of the task's encoder block only `max_len` is used (and
    `mlp_dim` for the two-tower head of Retrieval with `towers: shared`: LRA's head over one
    shared encoder; `towers: unshared` is lra-igloo's own Retrieval model,
    longrangearena_matching.py, with its own head)."""
    net = dict(model_cfg["net"])
    head_opts = dict(
        norm=net.pop("head_norm"),
        dropout=net.pop("head_dropout"),
        hidden=net.pop("head_hidden", 0),
        bn_eps=net.pop("bn_eps", 1e-5),
        bn_momentum=net.pop("bn_momentum", 0.1),
    )
    init, towers, l2 = net.pop("init", "torch"), net.pop("towers", "shared"), net.pop("l2", 0.0)
    if init not in INITS:
        raise ValueError(f"igloo_lra: init='{init}' is not one of {', '.join(INITS)}")
    if towers not in TOWERS:
        raise ValueError(f"igloo_lra: towers='{towers}' is not one of {', '.join(TOWERS)}")

    def encoder() -> IglooLRAEncoder:
        return IglooLRAEncoder(vocab_size=vocab_size, max_len=encoder_cfg["max_len"], **net)

    if head == "dual" and towers == "shared":
        if l2:
            raise ValueError("igloo_lra: model.net.l2 needs towers=unshared on Retrieval")
        shared = encoder()
        if init == "keras":
            keras_init(shared)
        pair = PairHead(shared.features, encoder_cfg["mlp_dim"], num_classes, interaction)
        return TwoTowerClassifier(shared, pair)
    if head == "dual":
        pair_encoder = IglooLRATowers(encoder(), encoder())
        model: nn.Module = IglooLRAPair(
            pair_encoder, IglooLRAHead(4 * pair_encoder.features, num_classes, **head_opts), l2
        )
    else:
        single = encoder()
        model = IglooLRAClassifier(
            single, IglooLRAHead(single.features, num_classes, **head_opts), l2
        )
    if init == "keras":
        keras_init(model)
    return model
