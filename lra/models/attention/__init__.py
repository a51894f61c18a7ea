"""Token mixers, one mechanism per file, each registered in `lra.registry.MIXERS`.

The mixer contract: what every mixer does, checked for every registered mixer by
`tests/test_mixer_contract.py` (a new file here is picked up and tested by itself).

- **Registration.** A class in a module of this package, decorated `@MIXERS.register("name")`;
  a `conf/model/<model>.yaml` selects it with `mixer: {name: <name>, **options}`.
- **Constructor.** `Mixer(d_model=, num_heads=, qkv_dim=, attn_dropout=, max_len=, **options)`:
  the encoder passes the five keywords from `task.encoder` (`max_len` counts the CLS position
  when there is one) and every other key of `model.mixer` as `options`. A mixer may ignore
  `num_heads` or `qkv_dim` (IGLOO uses qkv_dim as its value width) but must accept them. An
  option `bias: null` is replaced by what `task.encoder.init` gives (lra: False, as LRA's
  attention; torch: True). With `task.encoder.padding: lra` the encoder also passes
  `mask_queries=True`: a padded query attends uniformly to every position, as LRA's Flax
  attention (`lra.models.sdpa.uniform_padded_queries`); a mixer without queries accepts and
  ignores it (IGLOO), and one without the keyword is refused with that mode, by name.
- **Initialisation.** With `task.encoder.init: lra` the encoder re-initialises every nn.Linear
  of the blocks as LRA's dense layers (lra/models/init.py: xavier_uniform, biases ~0); a Linear
  that fuses k projections sets `linear.fused = k`. Other parameters keep the mixer's own init.
- **Forward.** `mixer(x, mask, **shared) -> [B, n, D]`, x: [B, n, D] (the normed block input,
  n <= max_len), mask: [B, n] bool, True on real tokens, False on padding, or None where the
  task's batches never hold padding (the encoder's `padded`: the pixel tasks), which must give
  what an all-True mask gives (so SDPA may take its flash kernel, which takes no mask); the output
  has x's dtype. **Padding is never read**: whatever stands at padded positions, the outputs at
  real positions are the same (outputs at padded positions are free; the encoder never pools
  them).
- **Counting on the meta device.** `lra.params` and every run count parameters by building the
  network under `torch.device("meta")`, so the constructor must work there, and must not draw
  from torch's global generator there (tables that are not parameters can be skipped:
  `torch.get_default_device().type == "meta"`). Its parameters there are those of a real build.
- **Determinism.** The same `torch.manual_seed` before construction gives the same parameters,
  buffers and outputs.
- **Gradients.** Every parameter receives a gradient from a loss on the outputs at real positions.
- **Parameter matching.** The model config declares `match.knobs`, the integer widths
  `lra.matching` may turn (in order) to meet each task's parameter budget, e.g.
  `[{path: task.encoder.mlp_dim, min: 1}]` (the default when the key is absent); with them the
  model is within `params.tolerance` of the budget on every task (`python -m lra.params --check`).
- **Shared state (optional).** A classmethod `build_shared(**same keywords) -> nn.Module` makes
  one module for the whole encoder; the encoder calls it once per forward and passes the dict it
  returns to every layer's mixer as keyword arguments (DeBERTa's relative-position table E). It
  counts among the mixer's parameters.
"""
