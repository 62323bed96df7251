"""Mesh config, validation messages, rule sets and PartitionSpecs."""

import jax
import pytest
from jax.sharding import PartitionSpec as P

from ling_jax.config import get_preset
from ling_jax.parallel.mesh import MESH_AXES, MeshError, make_mesh, mesh_spec, validate_mesh
from ling_jax.parallel.rules import RULE_SETS, get_rules, logical_to_spec


def test_mesh_spec_fills_minus_one_and_multiplies_dcn():
    spec = mesh_spec(dict(fsdp=-1, expert=2, dcn_data=2), device_count=8)
    assert spec.ici["fsdp"] == 2 and spec.shape["data"] == 2 and spec.num_devices == 8


def test_make_mesh_axes_and_hybrid_layout():
    mesh = make_mesh(mesh_spec(dict(data=2, expert=2, tensor=2)))
    assert mesh.axis_names == MESH_AXES
    assert dict(mesh.shape) == dict(pipeline=1, data=2, fsdp=1, context=1, expert=2, tensor=2)
    hybrid = make_mesh(mesh_spec(dict(fsdp=4, dcn_data=2)))
    assert dict(hybrid.shape)["data"] == 2 and dict(hybrid.shape)["fsdp"] == 4
    # The DCN axis is outermost: the first 4 devices form one "slice" (data index 0).
    first = {d.id for d in hybrid.devices[0, 0].reshape(-1)}
    assert first == {d.id for d in jax.devices()[:4]}


@pytest.mark.parametrize("mesh, phases, needle", [
    (dict(data=4), (), "uses 4 devices but 8 are available"),
    (dict(expert=8, data=1), (), None),
    (dict(expert=3, data=1), (), "mesh.expert: model.num_experts=256"),
    (dict(tensor=8), (), "model.num_key_value_heads=4 is not divisible by tensor=8"),
    (dict(pipeline=8), (), "mesh.pipeline/mesh.repeats: the 19 MoE layers"),
    (dict(data=2, fsdp=4), [("pretrain", 12, 1)], "phases.pretrain.batch_size: 12"),
    (dict(data=2, fsdp=4), [("pretrain", 16, 4)], "microbatches (4)"),
    (dict(data=8, capacity_factor=-1.0), (), "mesh.capacity_factor"),
    (dict(context=4, data=2), [("long", 8, 1, 4096)], None),
    (dict(context=4, data=2), [("long", 8, 1, 4100)], "phases.long.seq_len: 4100 is not "
                                                      "divisible by 2 × mesh.context (8)"),
    (dict(context=2, pipeline=2, data=2), (), "mesh.context: context parallelism (2) does not"),
    (dict(context=4, data=2, context_exchange="rings"), (), "mesh.context_exchange: 'rings' is "
                                                           "not one of"),
    (dict(context=4, data=2, context_exchange="ring"), (), "mesh.context_exchange: 'ring' runs "
                                                          "the"),
])
def test_validation_names_the_field(mesh, phases, needle):
    cfg = get_preset("ling_mini_2")  # 256 experts, 16 heads, 4 kv heads, 19 MoE layers
    cfg.num_hidden_layers = 21 if mesh.get("pipeline") == 2 else cfg.num_hidden_layers
    spec = mesh_spec(mesh)
    devices = 8 if mesh == dict(data=4) else spec.num_devices
    if needle is None:
        validate_mesh(spec, cfg, device_count=devices, phases=phases)
        return
    with pytest.raises(MeshError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        validate_mesh(spec, cfg, device_count=devices, phases=phases)


def test_bad_fields_are_rejected():
    with pytest.raises(MeshError, match="unknown field"):
        mesh_spec(dict(dta=2))
    with pytest.raises(MeshError, match="mesh.tensor: must be a positive int"):
        mesh_spec(dict(tensor=0))
    with pytest.raises(ValueError, match="mesh.rules: unknown rule set 'zero3'"):
        mesh_spec(dict(rules="zero3"))


def test_rule_sets_cover_every_logical_axis():
    for name in RULE_SETS:
        get_rules(name)  # raises when an axis is missing
    with pytest.raises(ValueError, match=r"no entry for logical axes \['batch'"):
        get_rules({k: () for k in RULE_SETS["dp"] if k != "batch"})


def test_logical_to_spec_uses_each_axis_once_and_only_if_it_divides():
    rules = get_rules("fsdp_ep")
    shape = dict(pipeline=1, data=2, fsdp=2, expert=2, tensor=2)
    # expert weights: experts take `expert`, so embed keeps only `fsdp`.
    assert logical_to_spec(("layers", "expert", "embed", "mlp"), rules, (3, 8, 64, 32), shape) == \
        P(None, "expert", "fsdp", "tensor")
    # non-expert weights: embed over fsdp × expert.
    assert logical_to_spec(("vocab", "embed"), rules, (256, 64), shape) == \
        P("tensor", ("fsdp", "expert"))
    # 3 kv heads cannot be split over tensor=2: replicated instead of an invalid spec.
    assert logical_to_spec(("embed", "kv_heads", "head_dim"), rules, (64, 3, 16), shape) == \
        P(("fsdp", "expert"), None, None)
    assert logical_to_spec(("batch", "seq"), rules) == P(("data", "fsdp", "expert"), "context")
    assert logical_to_spec(("batch", "seq"), rules, (4, 16), shape) == P(("data", "fsdp"), None)
    # A context axis shards the sequence and ZeRO-shards weights' embed dim like fsdp.
    cp = dict(shape, context=2)
    assert logical_to_spec(("batch", "seq"), rules, (4, 16), cp) == P(("data", "fsdp"), "context")
    assert logical_to_spec(("layers", "expert", "embed", "mlp"), rules, (3, 8, 64, 32), cp) == \
        P(None, "expert", ("fsdp", "context"), "tensor")
    with pytest.raises(ValueError, match="logical axis 'heads_typo' has no rule"):
        logical_to_spec(("heads_typo",), rules)


def test_pipeline_bubble_and_microbatch_check():
    from ling_jax.parallel.pipeline import bubble_fraction

    assert bubble_fraction(4, 1, 4) == pytest.approx(3 / 7)
    assert bubble_fraction(4, 2, 8) == pytest.approx(3 / 19)  # repeats shrink the bubble
    cfg = get_preset("ling_mini_2")  # 19 MoE layers: not splittable, so use a 20-layer copy
    cfg.num_hidden_layers = 21
    spec = mesh_spec(dict(pipeline=4, data=2, pipeline_microbatches=2))
    with pytest.raises(MeshError, match="mesh.pipeline_microbatches: 2 must be >= pipeline=4"):
        validate_mesh(spec, cfg, device_count=8)
    validate_mesh(mesh_spec(dict(pipeline=4, data=2, repeats=5)), cfg, device_count=8,
                  phases=[("pretrain", 16 * 2, 2)])  # 20 layers = 4 stages × 5 repeats


def test_mesh_block_has_every_field():
    from ling_jax.parallel.mesh import MESH_DEFAULTS, mesh_block

    block = mesh_block(fsdp=8)
    assert set(block.keys()) == set(MESH_DEFAULTS) and block.fsdp == 8
    with pytest.raises(MeshError, match="unknown field"):
        mesh_block(fdsp=8)
