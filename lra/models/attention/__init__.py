"""Token mixers, one mechanism per file, each registered in `lra.registry.MIXERS`.

Every mixer is an `nn.Module` built as `Mixer(d_model=, num_heads=, qkv_dim=, attn_dropout=,
max_len=, **options)` and called as `mixer(x, mask)` with x: [B, n, D] and mask: [B, n] (True
where the token is real, False on padding); it returns [B, n, D].
"""
