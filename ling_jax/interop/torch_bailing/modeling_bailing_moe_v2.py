"""BailingMoeV2 (Ling 2.0) in PyTorch for transformers, written for ling-jax exports.

The same forward as ling_jax.model (ling2-reference §2): pre-norm GQA with QK-RMSNorm and partial
rotate-half RoPE, dense SwiGLU layers then sigmoid-routed MoE (expert bias for selection only,
group-limited top-k, renormalised x routed_scaling_factor, one shared expert), untied head. What
differs from the released remote code, on purpose:
- inference never runs the MTP layer, so transformers' KV cache (sized to num_hidden_layers) is
  never over-indexed and `generate()` works with default arguments; `output_mtp_logits=True`
  computes MTP logits on an uncached forward;
- `from_pretrained` loads in the checkpoint's dtype unless `dtype` is given, keeps the router's
  `expert_bias` in fp32 whatever the dtype, and dequantises FP8 block-scaled checkpoints
  (`*_scale_inv`) on load, on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .configuration_bailing_moe_v2 import BailingMoeV2Config

# Linear layers an FP8 checkpoint stores as E4M3 + `weight_scale_inv` (reference §3, LV2-convert).
FP8_LINEARS = ("query_key_value", "dense", "gate_proj", "up_proj", "down_proj")


# ---------------------------------------------------------------------------------------------
# Norms and rotary embeddings.


class BailingMoeV2RMSNorm(nn.Module):
    """RMSNorm computed in fp32, cast back to the input dtype before the weight (reference §2.2)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_inv_freq(width: int, theta: float, max_pos: int, scaling: dict):
    """YaRN frequencies and attention scale, as transformers' yarn RoPE initialisation."""
    factor = float(scaling["factor"])
    original = scaling.get("original_max_position_embeddings")
    if original:
        factor = max_pos / float(original)
    else:
        original = max_pos
    attention = scaling.get("attention_factor")
    if attention is None:
        ms, ms_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention = (_yarn_mscale(factor, ms) / _yarn_mscale(factor, ms_all) if ms and ms_all
                     else _yarn_mscale(factor))
    beta_fast, beta_slow = scaling.get("beta_fast") or 32, scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return width * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), width - 1)
    high = high + 0.001 if low == high else high
    ramp = ((torch.arange(width // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    pos_freqs = theta ** (torch.arange(0, width, 2, dtype=torch.float64) / width)
    inv_freq = (1.0 / (factor * pos_freqs)) * ramp + (1.0 / pos_freqs) * (1.0 - ramp)
    return inv_freq.float(), float(attention)


class BailingMoeV2RotaryEmbedding(nn.Module):
    """cos/sin of the rotated slice of each head, in fp32, then cast to the activation dtype."""

    def __init__(self, config: BailingMoeV2Config):
        super().__init__()
        width = config.rotary_width
        scaling = config.rope_scaling or {}
        if scaling.get("rope_type", scaling.get("type")) == "yarn":
            inv_freq, self.attention_scaling = _yarn_inv_freq(
                width, float(config.rope_theta), int(config.max_position_embeddings), scaling)
        else:
            exponents = torch.arange(0, width, 2, dtype=torch.int64).float() / width
            inv_freq, self.attention_scaling = 1.0 / (config.rope_theta ** exponents), 1.0
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _apply(self, fn, recurse=True):
        inv_freq = self.inv_freq
        super()._apply(fn, recurse)
        self.inv_freq = inv_freq.to(self.inv_freq.device)  # never rounded by .to(dtype)
        return self

    @torch.no_grad()
    def forward(self, positions_BT: torch.Tensor, dtype: torch.dtype):
        freqs = positions_BT.float()[..., None] * self.inv_freq.float().to(positions_BT.device)
        emb = torch.cat([freqs, freqs], dim=-1)
        return ((emb.cos() * self.attention_scaling).to(dtype),
                (emb.sin() * self.attention_scaling).to(dtype))


def apply_rope(x_BNTH: torch.Tensor, cos_BTR: torch.Tensor, sin_BTR: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on the first R dims of each head (dim j pairs with j + R/2)."""
    width = cos_BTR.shape[-1]
    rot, rest = x_BNTH[..., :width], x_BNTH[..., width:]
    half = torch.cat([-rot[..., width // 2:], rot[..., : width // 2]], dim=-1)
    cos, sin = cos_BTR[:, None], sin_BTR[:, None]
    return torch.cat([rot * cos + half * sin, rest], dim=-1)


# ---------------------------------------------------------------------------------------------
# Attention and feed-forward blocks.


class BailingMoeV2Attention(nn.Module):
    """Fused QKV ([all Q | all K | all V] rows), QK-norm before RoPE, GQA, fp32 softmax."""

    def __init__(self, config: BailingMoeV2Config, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.query_key_value = nn.Linear(
            config.hidden_size, (self.heads + 2 * self.kv_heads) * self.head_dim, bias=False)
        self.dense = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)
        self.use_qk_norm = config.use_qk_norm
        if self.use_qk_norm:
            self.query_layernorm = BailingMoeV2RMSNorm(self.head_dim, config.rms_norm_eps)
            self.key_layernorm = BailingMoeV2RMSNorm(self.head_dim, config.rms_norm_eps)

    def forward(self, x_BTD, cos, sin, mask_B1TS, cache: Cache | None) -> torch.Tensor:
        batch, length, _ = x_BTD.shape
        qkv = self.query_key_value(x_BTD).view(batch, length, -1, self.head_dim)
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=2)
        if self.use_qk_norm:
            q, k = self.query_layernorm(q), self.key_layernorm(k)
        q, k, v = (apply_rope(q.transpose(1, 2), cos, sin), apply_rope(k.transpose(1, 2), cos, sin),
                   v.transpose(1, 2))
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        repeat = self.heads // self.kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        scores = (q @ k.transpose(-1, -2)).float() * self.head_dim**-0.5 + mask_B1TS
        out = scores.softmax(-1).to(v.dtype) @ v
        return self.dense(out.transpose(1, 2).reshape(batch, length, -1))


class BailingMoeV2MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, hidden: int, width: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, width, bias=False)
        self.up_proj = nn.Linear(hidden, width, bias=False)
        self.down_proj = nn.Linear(width, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class BailingMoeV2Gate(nn.Module):
    """Sigmoid router in fp32; `expert_bias` picks experts but never weighs them (reference §2.5)."""

    def __init__(self, config: BailingMoeV2Config):
        super().__init__()
        self.top_k, self.n_group, self.topk_group = (
            config.num_experts_per_tok, config.n_group, config.topk_group)
        self.scale = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts, dtype=torch.float32))

    def _apply(self, fn, recurse=True):
        bias = self.expert_bias
        super()._apply(fn, recurse)
        # .to(bfloat16) must not round the bias: rounding flips routing (reference §2.7).
        self.expert_bias = bias.to(self.expert_bias.device)
        return self

    def forward(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.sigmoid(F.linear(x_TD.float(), self.weight.float()))
        selection = scores + self.expert_bias.float()
        if self.n_group > 1:
            tokens, experts = selection.shape
            grouped = selection.view(tokens, self.n_group, experts // self.n_group)
            group_scores = grouped.topk(2, dim=-1).values.sum(-1)
            kept = group_scores.topk(self.topk_group, dim=-1).indices
            keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, kept, True)
            keep = keep.repeat_interleave(experts // self.n_group, dim=1)
            selection = selection.masked_fill(~keep, float("-inf"))
        chosen = selection.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, chosen)
        if self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return chosen, weights * self.scale


class BailingMoeV2SparseMoeBlock(nn.Module):
    """Dropless routed experts (each token to its top-k) plus the always-on shared expert."""

    def __init__(self, config: BailingMoeV2Config):
        super().__init__()
        self.gate = BailingMoeV2Gate(config)
        self.experts = nn.ModuleList(
            [BailingMoeV2MLP(config.hidden_size, config.moe_intermediate_size)
             for _ in range(config.num_experts)])
        self.shared_experts = (BailingMoeV2MLP(config.hidden_size, config.shared_expert_width)
                               if config.num_shared_experts else None)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        x = x_BTD.reshape(-1, x_BTD.shape[-1])
        chosen, weights = self.gate(x)
        routed = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
        for expert in chosen.unique().tolist():
            token, slot = (chosen == expert).nonzero(as_tuple=True)
            y = self.experts[expert](x[token]).float() * weights[token, slot, None]
            routed.index_add_(0, token, y)
        out = routed.to(x.dtype)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        return out.view(x_BTD.shape)


class BailingMoeV2DecoderLayer(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(x)); dense SwiGLU below first_k_dense_replace."""

    def __init__(self, config: BailingMoeV2Config, layer_idx: int):
        super().__init__()
        eps = config.rms_norm_eps
        self.input_layernorm = BailingMoeV2RMSNorm(config.hidden_size, eps)
        self.attention = BailingMoeV2Attention(config, layer_idx)
        self.post_attention_layernorm = BailingMoeV2RMSNorm(config.hidden_size, eps)
        self.mlp = (BailingMoeV2SparseMoeBlock(config)
                    if layer_idx >= config.first_k_dense_replace
                    else BailingMoeV2MLP(config.hidden_size, config.intermediate_size))

    def forward(self, x, cos, sin, mask, cache: Cache | None) -> torch.Tensor:
        x = x + self.attention(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class BailingMoeV2MTPLayer(BailingMoeV2DecoderLayer):
    """DeepSeek-V3 style MTP: eh_proj([enorm(emb(x_{t+1})); hnorm(h_t)]) → MoE layer → norm."""

    def __init__(self, config: BailingMoeV2Config, layer_idx: int):
        super().__init__(config, layer_idx)
        eps, d = config.rms_norm_eps, config.hidden_size
        self.enorm = BailingMoeV2RMSNorm(d, eps)
        self.hnorm = BailingMoeV2RMSNorm(d, eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)
        self.final_layernorm = BailingMoeV2RMSNorm(d, eps)

    def predict(self, hidden, next_embeds, cos, sin, mask) -> torch.Tensor:
        u = self.eh_proj(torch.cat([self.enorm(next_embeds), self.hnorm(hidden)], dim=-1))
        return self.final_layernorm(super().forward(u, cos, sin, mask, None))


# ---------------------------------------------------------------------------------------------
# Models.


def attention_bias(attention_mask, batch: int, length: int, past: int, device) -> torch.Tensor:
    """Additive fp32 mask [B, 1, T, past + T]: causal, and padding keys (mask 0) hidden."""
    total = past + length
    query_pos = torch.arange(past, total, device=device)[:, None]
    allowed = (torch.arange(total, device=device)[None, :] <= query_pos)[None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, None, -total:].bool()
    allowed = allowed.expand(batch, length, total)
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=device)
    return bias.masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]


class BailingMoeV2PreTrainedModel(PreTrainedModel):
    config_class = BailingMoeV2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["BailingMoeV2DecoderLayer", "BailingMoeV2MTPLayer"]
    _skip_keys_device_placement = ["past_key_values"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(0.0, std)
        elif isinstance(module, BailingMoeV2Gate):
            module.weight.data.normal_(0.0, std)
            module.expert_bias.zero_()
        elif isinstance(module, BailingMoeV2RMSNorm):
            module.weight.data.fill_(1.0)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' loader, defaulting to the checkpoint's dtype, with FP8 dequantised."""
        if "dtype" not in kwargs and "torch_dtype" not in kwargs:
            kwargs["dtype"] = "auto"
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.dequantise_fp8()
        return loaded

    def dequantise_fp8(self) -> None:
        """Replace E4M3 weights by weight * their 128x128 block scales, in the model's dtype."""
        block = self.config.fp8_weight_block_size
        if not block:
            return
        dtype = self.get_output_embeddings().weight.dtype
        for name, module in self.named_modules():
            scale = getattr(module, "weight_scale_inv", None)
            if scale is None:
                continue
            weight = module.weight
            if weight.dtype == torch.float8_e4m3fn:
                rows, cols = weight.shape
                want = (math.ceil(rows / block[0]), math.ceil(cols / block[1]))
                if tuple(scale.shape) != want:
                    raise ValueError(f"{name}.weight_scale_inv has shape {tuple(scale.shape)}, "
                                     f"expected {want} for a {tuple(weight.shape)} weight")
                full = scale.float().repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
                weight = weight.float() * full[:rows, :cols]
            module.weight = nn.Parameter(weight.to(dtype), requires_grad=module.weight.requires_grad)
            del module._buffers["weight_scale_inv"]
        self.config.fp8_weight_block_size = None  # a re-save writes plain weights

    def _register_fp8_scales(self) -> None:
        """Slots for the `*_scale_inv` tensors of an FP8 checkpoint (fp32, as stored)."""
        block = self.config.fp8_weight_block_size
        if not block:
            return
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in FP8_LINEARS:
                rows, cols = module.weight.shape
                module.register_buffer("weight_scale_inv", torch.ones(
                    math.ceil(rows / block[0]), math.ceil(cols / block[1]), dtype=torch.float32))


class BailingMoeV2Model(BailingMoeV2PreTrainedModel):
    """Embeddings, decoder layers (then MTP layers, stored as layers L..), final norm."""

    def __init__(self, config: BailingMoeV2Config):
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        layers = config.num_hidden_layers
        self.layers = nn.ModuleList(
            [BailingMoeV2DecoderLayer(config, i) for i in range(layers)]
            + [BailingMoeV2MTPLayer(config, layers + j)
               for j in range(config.num_nextn_predict_layers)])
        self.norm = BailingMoeV2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = BailingMoeV2RotaryEmbedding(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    def rope_and_mask(self, x_BTD, attention_mask, position_ids, past: int, cache_position):
        """cos/sin of each position and the additive attention mask for `x_BTD`."""
        batch, length, _ = x_BTD.shape
        if position_ids is None:
            start = past if cache_position is None else int(cache_position[0])
            position_ids = torch.arange(start, start + length, device=x_BTD.device)[None]
        cos, sin = self.rotary_emb(position_ids.expand(batch, length), x_BTD.dtype)
        return cos, sin, attention_bias(attention_mask, batch, length, past, x_BTD.device)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values: Cache | None = None, inputs_embeds=None,
                use_cache: bool | None = None, cache_position=None,
                **kwargs) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        if past_key_values is not None and not isinstance(past_key_values, Cache):
            raise TypeError("past_key_values must be a transformers Cache (e.g. DynamicCache())")
        cache = past_key_values if use_cache else None
        past = cache.get_seq_length() if cache is not None else 0
        cos, sin, mask = self.rope_and_mask(x, attention_mask, position_ids, past, cache_position)
        # Only the L decoder layers: the MTP layers (indices L..) never touch the cache.
        for layer in self.layers[: self.config.num_hidden_layers]:
            x = layer(x, cos, sin, mask, cache)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), past_key_values=cache)


@dataclass
class BailingMoeV2CausalLMOutput(CausalLMOutputWithPast):
    """CausalLMOutputWithPast plus MTP logits [n_mtp, B, T, V] when asked for."""

    mtp_logits: torch.FloatTensor | None = None


class BailingMoeV2ForCausalLM(BailingMoeV2PreTrainedModel, GenerationMixin):
    _tied_weights_keys = ["lm_head.weight"]

    def __init__(self, config: BailingMoeV2Config):
        super().__init__(config)
        self.model = BailingMoeV2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._register_fp8_scales()
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values: Cache | None = None, inputs_embeds=None, labels=None,
                use_cache: bool | None = None, cache_position=None, logits_to_keep: int = 0,
                output_mtp_logits: bool = False, **kwargs) -> BailingMoeV2CausalLMOutput:
        """Logits (fp32) of every position, or of the last `logits_to_keep`; loss if labels."""
        if output_mtp_logits:
            if past_key_values is not None:
                raise ValueError("output_mtp_logits needs an uncached forward (no past_key_values)")
            use_cache = False
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                         use_cache, cache_position)
        hidden = out.last_hidden_state
        keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        logits = self.lm_head(hidden[:, keep]).float()
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].reshape(-1).to(logits.device), ignore_index=-100)
        mtp = (self._mtp_logits(input_ids, hidden, attention_mask, position_ids)
               if output_mtp_logits else None)
        return BailingMoeV2CausalLMOutput(loss=loss, logits=logits,
                                          past_key_values=out.past_key_values, mtp_logits=mtp)

    def _mtp_logits(self, input_ids, hidden, attention_mask, position_ids) -> torch.Tensor:
        if input_ids is None:
            raise ValueError("output_mtp_logits needs input_ids (the MTP layer embeds x_{t+1})")
        cos, sin, mask = self.model.rope_and_mask(hidden, attention_mask, position_ids, 0, None)
        logits, ids = [], input_ids
        for layer in self.model.layers[self.config.num_hidden_layers:]:
            ids = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], dim=1)  # last: id 0
            hidden = layer.predict(hidden, self.model.word_embeddings(ids), cos, sin, mask)
            logits.append(self.lm_head(hidden).float())
        if not logits:
            raise ValueError("this checkpoint has no MTP layer (num_nextn_predict_layers = 0)")
        return torch.stack(logits)
