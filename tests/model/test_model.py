"""The compact model and its chat format behave as the Qwen2.5-VL family: same patches, same
3D positions, save/load through the Auto classes, and a real Qwen2.5-VL loads the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from foveal.model import loader
from foveal.model.chat import ChatFormat, Chunk, positions
from foveal.model.pixels import CLIP_MEAN, CLIP_STD, normalized, patchify
from foveal.model.vision import unpatchify
from foveal.reasoning.loop import Inspection, Loop, LoopOptions


def test_patches_match_the_transformers_qwen2vl_processor() -> None:
    pil = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")
    view = np.random.default_rng(0).integers(0, 256, (364, 504, 3), dtype=np.uint8)
    patches, grid = patchify(view)
    ref = pil.Qwen2VLImageProcessorPil(max_pixels=448 * 448, min_pixels=4 * 28 * 28)(
        images=[view], return_tensors="np")
    assert grid == tuple(ref["image_grid_thw"][0])
    np.testing.assert_allclose(patches, ref["pixel_values"], atol=1e-6)


def test_the_conv_tower_rebuilds_the_image_from_patches() -> None:
    view = np.random.default_rng(1).integers(0, 256, (280, 420, 3), dtype=np.uint8)
    patches, grid = patchify(view)
    image = unpatchify(torch.from_numpy(patches), grid, 14, 2, 2)
    assert image.shape == (3, 280, 420)
    expected = (view[..., 0] / 255.0 - 0.48145466) / 0.26862954
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-5)


def test_normalized_pixels_equal_the_processors_arithmetic_on_a_cropped_view() -> None:
    frame = np.random.default_rng(4).integers(0, 256, (600, 700, 3), dtype=np.uint8)
    view = frame[33:33 + 308, 51:51 + 476]  # a crop: not contiguous
    ours = normalized(view)
    mean, std = np.asarray(CLIP_MEAN), np.asarray(CLIP_STD)
    expected = ((view / 255.0 - mean) / std).transpose(2, 0, 1)  # float64 throughout
    assert ours.dtype == np.float32 and ours.shape == (3, 308, 476) and ours.flags.c_contiguous
    np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_a_remote_models_chat_format_carries_views_and_grids_but_no_patches(
        micro_vlm: loader.VLM, tmp_path: Path) -> None:
    loader.save(micro_vlm, tmp_path / "m")
    remote, _ = loader.load_chat(tmp_path / "m")
    view = np.random.default_rng(5).integers(0, 256, (336, 448, 3), dtype=np.uint8)
    local_chunk, remote_chunk = (fmt.prompt([view], "Inspect this part.") for fmt in (micro_vlm.chat, remote))
    assert remote_chunk.ids == local_chunk.ids and remote_chunk.types == local_chunk.types
    assert remote_chunk.grids == local_chunk.grids == [(1, 24, 32)]
    assert remote_chunk.images[0] is view and local_chunk.images[0] is view
    assert remote_chunk.patches == [] and len(local_chunk.patches) == 1
    with pytest.raises(ValueError, match="multiples of 28"):
        remote.image(view[:300])


def test_chunk_positions_equal_get_rope_index(micro_vlm: loader.VLM) -> None:
    fmt = micro_vlm.chat
    rng = np.random.default_rng(2)
    whole = fmt.prompt([rng.integers(0, 256, (336, 448, 3), dtype=np.uint8)], "Inspect this part.")
    turn = fmt.assistant("A mark. <tool_call>{}</tool_call>", True)
    env = fmt.environment("Here is the cropped image (Image Size: 448x448):",
                          [rng.integers(0, 256, (448, 448, 3), dtype=np.uint8)])
    full = Chunk().extend(whole).extend(turn).extend(env)
    ours, _ = positions(full, 0)
    # chunk by chunk from the running position gives the same as all at once
    p1, nxt = positions(whole, 0)
    p2, nxt = positions(turn, nxt)
    p3, _ = positions(env, nxt)
    np.testing.assert_array_equal(np.concatenate([p1, p2, p3], axis=1), ours)
    ids = torch.tensor([full.ids])
    ref, _ = micro_vlm.model.model.get_rope_index(ids, mm_token_type_ids=torch.tensor([full.types]),
                                                  image_grid_thw=torch.tensor(full.grids))
    np.testing.assert_array_equal(ref[:, 0].numpy(), ours)


def test_compact_model_saves_and_loads_through_the_auto_classes(micro_vlm: loader.VLM,
                                                                tmp_path: Path) -> None:
    loader.save(micro_vlm, tmp_path / "m", meta={"note": "test"})
    again = loader.load(tmp_path / "m")
    assert type(again.model).__name__ == "FovealVLForConditionalGeneration"
    assert again.meta["note"] == "test"
    before, after = micro_vlm.model.state_dict(), again.model.state_dict()
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), name


def test_a_type_reader_starts_as_the_view_heads_copy_and_is_saved_apart_from_it(micro_vlm: loader.VLM,
                                                                                tmp_path: Path) -> None:
    tower = micro_vlm.model.model.visual
    pooled = torch.randn(3, 2 * tower.feature_dim)
    view = tower.type_logits(pooled)  # no reader: the view head reads
    reader = tower.enable_reader()
    assert torch.equal(tower.type_logits(pooled), view) and tower.enable_reader() is reader
    with torch.no_grad():
        reader.bias += 1.0
    loader.save(micro_vlm, tmp_path / "m")
    again = loader.load(tmp_path / "m").model.model.visual
    assert again.reader is not None and torch.equal(again.reader.bias, reader.bias)
    assert torch.equal(again.head.view.bias, tower.head.view.bias)  # the view head is its own
    assert not torch.equal(again.type_logits(pooled), again.head.view(pooled))


def test_loading_a_directory_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(loader.ModelError, match=r"no config\.json"):
        loader.load(tmp_path)


def tiny_qwen25vl(tokenizer: object, path: Path) -> Path:
    """A randomly initialised real Qwen2.5-VL (vision transformer and all), saved like a checkpoint."""
    ids = {k: tokenizer.convert_tokens_to_ids(t) for k, t in (  # type: ignore[attr-defined]
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,  # type: ignore[arg-type]
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [4, 6, 6]}),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[0], window_size=112),
        **ids)
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)  # type: ignore[attr-defined]
    return path


def test_a_real_qwen25vl_checkpoint_runs_the_loop_end_to_end(micro_tokenizer: object, tmp_path: Path) -> None:
    vlm = loader.load(tiny_qwen25vl(micro_tokenizer, tmp_path / "qwen"))
    assert type(vlm.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    frame = np.random.default_rng(3).integers(0, 256, (700, 900, 3), dtype=np.uint8)
    loop = Loop(vlm, LoopOptions(temperature=1.0, seed=1, max_turn_tokens=24))
    [trace] = loop.run([Inspection([frame], "Inspect this part.", item_id="x")])
    assert trace.defect_type in Inspection([frame], "").taxonomy  # noise, but always an answer
    assert trace.steps and trace.latency_ms > 0
    assert isinstance(vlm.chat, ChatFormat)


def test_a_merge4_model_has_56px_cells_and_keeps_the_protocol(micro_tokenizer: object,
                                                              tmp_path: Path) -> None:
    from foveal.training.sft import new_model

    vlm = new_model(micro_tokenizer, "micro4", name="m", version="0", seed=0)  # type: ignore[arg-type]
    assert vlm.budget.factor == 56 and vlm.chat.spec.merge == 4
    rng = np.random.default_rng(3)
    chunk = vlm.chat.prompt([rng.integers(0, 256, (336, 448, 3), dtype=np.uint8)], "Inspect this part.")
    assert chunk.types.count(1) == 6 * 8  # one token per 56 px cell
    tower = vlm.model.model.visual
    out = tower(torch.from_numpy(np.concatenate(chunk.patches)), torch.tensor(chunk.grids)).pooler_output
    assert out.shape == (48, vlm.model.config.text_config.hidden_size)
    ours, _ = positions(chunk, 0, vlm.chat.spec)
    ref, _ = vlm.model.model.get_rope_index(torch.tensor([chunk.ids]),
                                            mm_token_type_ids=torch.tensor([chunk.types]),
                                            image_grid_thw=torch.tensor(chunk.grids))
    np.testing.assert_array_equal(ref[:, 0].numpy(), ours)
    loader.save(vlm, tmp_path / "m")
    again = loader.load(tmp_path / "m")
    assert again.budget == vlm.budget and again.chat.spec == vlm.chat.spec
    assert again.model.model.visual.head is not None


def test_the_cell_head_summary_reaches_every_token_of_a_view(micro_vlm: loader.VLM) -> None:
    tower = micro_vlm.model.model.visual
    fmap = torch.randn(tower.feature_dim, 3, 4)
    pos = torch.zeros(12, tower.position_dim)
    cell, summary = tower.summary(fmap, pos)
    assert cell.shape == (12, 7) and torch.allclose(cell.exp().sum(-1), torch.ones(12))
    assert summary.shape == (12, 7 + 1 + tower.position_dim)
    assert torch.equal(summary[0], summary[-1])


def test_the_default_preset_normalizes_the_merger_input_and_old_layouts_load_without(
        micro_tokenizer: object, tmp_path: Path) -> None:
    from foveal.training.sft import new_model

    default = new_model(micro_tokenizer, "default", name="m", version="0", seed=0)  # type: ignore[arg-type]
    tower = default.model.model.visual
    assert isinstance(tower.merger_in, torch.nn.LayerNorm)
    maps = [torch.randn(tower.feature_dim, 4, 5) * scale for scale in (1.0, 30.0)]
    with torch.no_grad():
        small, large = (tower.tokens([m]).norm(dim=-1).mean() for m in maps)
    assert float(large) < 3 * float(small)  # a 30x larger feature map does not give 30x larger tokens
    loader.save(default, tmp_path / "d")
    assert isinstance(loader.load(tmp_path / "d").model.model.visual.merger_in, torch.nn.LayerNorm)
    v1 = new_model(micro_tokenizer, "v1", name="m", version="0", seed=0)  # type: ignore[arg-type]
    assert isinstance(v1.model.model.visual.merger_in, torch.nn.Identity)


def test_the_type_embedding_puts_the_cell_heads_type_in_the_class_names_word_directions(
        micro_tokenizer: object, tmp_path: Path) -> None:
    from foveal.domain import DEFECT_TYPES
    from foveal.training.sft import new_model

    vlm = new_model(micro_tokenizer, "micro4", name="m", version="0", seed=0)  # type: ignore[arg-type]
    tower = vlm.model.model.visual
    fmap = torch.randn(tower.feature_dim, 3, 4)
    with torch.no_grad():
        plain = tower.tokens([fmap])
    assert loader.add_type_embedding(vlm) and not loader.add_type_embedding(vlm)  # once only
    ids = loader.class_name_ids(vlm.tokenizer, DEFECT_TYPES)
    assert all(name.startswith(vlm.tokenizer.decode([i])) for i, name in zip(ids, DEFECT_TYPES, strict=True))
    words = vlm.model.get_input_embeddings().weight[ids].detach()
    assert torch.allclose(tower.type_embed.detach(), words / words.norm(dim=-1, keepdim=True), atol=1e-6)
    with torch.no_grad():
        typed = tower.tokens([fmap])
        added = typed - plain  # per token: gain * |token| * (class probabilities @ unit word directions)
        cell, summary = tower.summary(fmap, torch.zeros(12, tower.position_dim))
        probs = 0.5 * (cell.exp() + summary[:, :7])
        expected = tower.type_gain * plain.norm(dim=-1, keepdim=True) * (probs @ tower.type_embed)
    assert torch.allclose(added, expected, rtol=1e-4, atol=1e-4)
    assert float(added.norm(dim=-1).mean()) > 0.1 * float(plain.norm(dim=-1).mean())  # not drowned out
    loader.save(vlm, tmp_path / "m")
    again = loader.load(tmp_path / "m").model.model.visual
    assert again.type_embed is not None and torch.equal(again.type_embed, tower.type_embed)
    with torch.no_grad():
        assert torch.allclose(again.tokens([fmap]), typed, atol=1e-5)


def test_a_type_embedding_needs_the_compact_tower_with_a_cell_head(micro_vlm: loader.VLM) -> None:
    micro_vlm.model.model.visual.head = None  # a tower without stage 0's classifier
    with pytest.raises(ValueError, match="cell head"):
        loader.add_type_embedding(micro_vlm)


def test_the_coordinate_embedding_gives_each_token_the_numbers_of_its_own_look_box(
        micro_tokenizer: object, tmp_path: Path) -> None:
    from foveal.model.vision import look_hundredths
    from foveal.operations import look_box
    from foveal.training.sft import new_model

    for rows in range(1, 13):  # the tensor version the tower (and its ONNX graph) uses is look_box
        for cols in range(1, 13):
            cells = [(r, c) for r in range(rows) for c in range(cols)]
            expected = [[round(v * 100) for v in look_box(rows, cols, r, c)] for r, c in cells]
            assert look_hundredths(rows, cols, torch.device("cpu")).tolist() == expected
    vlm = new_model(micro_tokenizer, "micro4", name="m", version="0", seed=0)  # type: ignore[arg-type]
    tower = vlm.model.model.visual
    fmap = torch.randn(tower.feature_dim, 3, 4)
    with torch.no_grad():
        plain = tower.tokens([fmap])
    assert loader.add_coord_embedding(vlm) and not loader.add_coord_embedding(vlm)
    ids = loader.number_ids(vlm.tokenizer)
    assert len(ids) == 101 and vlm.tokenizer.decode([ids[0]]).startswith("0")
    with torch.no_grad():
        added = tower.tokens([fmap]) - plain
        index = look_hundredths(3, 4, torch.device("cpu"))
        numbers = tower.coord_embed[index].sum(1) / 2
        expected = tower.coord_gain * plain.norm(dim=-1, keepdim=True) * numbers
    assert torch.allclose(added, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(added[0], added[-1])  # tokens of different cells carry different numbers
    loader.save(vlm, tmp_path / "m")
    again = loader.load(tmp_path / "m").model.model.visual
    assert again.coord_embed is not None and torch.equal(again.coord_embed, tower.coord_embed)


def test_a_reader_backbone_starts_as_the_towers_copy_reads_from_its_own_maps_and_is_saved(
        micro_vlm: loader.VLM, tmp_path: Path) -> None:
    tower = micro_vlm.model.model.visual
    images = [torch.randn(3, 112, 84)]
    with torch.no_grad():
        plain = tower.feature_maps(images)[0]
        assert torch.equal(tower.reader_maps(images)[0], plain)  # no backbone of its own: the tower's
        own = tower.enable_reader_backbone()
        assert tower.reader is not None and tower.enable_reader_backbone() is own
        assert torch.equal(tower.reader_maps(images)[0], plain)  # a copy reads as the tower did
        for p in own.parameters():
            p.add_(0.05 * torch.randn_like(p))
        moved = tower.reader_maps(images)[0]
        assert not torch.allclose(moved, plain) and torch.equal(tower.feature_maps(images)[0], plain)
    loader.save(micro_vlm, tmp_path / "m")
    again = loader.load(tmp_path / "m").model.model.visual
    assert again.config.reader_backbone and again.reader_backbone is not None
    with torch.no_grad():
        assert torch.allclose(again.reader_maps(images)[0], moved)
        assert torch.allclose(again.feature_maps(images)[0], plain)


def test_feature_maps_run_same_size_images_in_batches_of_bounded_pixels_and_keep_their_order(
        micro_vlm: loader.VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    from foveal.model import vision
    tower = micro_vlm.model.model.visual
    images = [torch.randn(3, 112, 84) if i % 3 else torch.randn(3, 56, 56) for i in range(10)]
    with torch.no_grad():
        alone = [tower.feature_maps([image])[0] for image in images]
        batches: list[int] = []
        run = tower.backbone
        monkeypatch.setattr(vision, "BATCH_PIXELS", 3 * 112 * 84)
        monkeypatch.setattr(tower, "backbone", lambda x: batches.append(len(x)) or run(x))
        maps = tower.feature_maps(images)
    # 6 images of 112 x 84 in batches of 3; 4 of 56 x 56 (3,136 px each) in one batch of 4
    assert sorted(batches) == [3, 3, 4]
    assert all(torch.allclose(m, a, atol=1e-5) for m, a in zip(maps, alone, strict=True))
    with torch.no_grad():
        monkeypatch.setattr(vision, "BATCH_PIXELS", 1)  # smaller than one image: one at a time
        batches.clear()
        tower.feature_maps(images[:4])
    assert batches == [1, 1, 1, 1]


def test_the_backbones_run_channels_last_from_creation_and_loading_with_the_maps_of_the_default_layout(
        micro_vlm: loader.VLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from foveal.model import vision
    tower = micro_vlm.model.model.visual
    tower.enable_reader_backbone()

    def laid_out(t: vision.ConvVisionTower, layout: torch.memory_format) -> bool:
        convs = [m.weight for b in (t.stem, t.blocks, t.down, t.reader_backbone)
                 for m in b.modules() if isinstance(m, torch.nn.Conv2d)]
        return bool(convs) and all(w.is_contiguous(memory_format=layout) for w in convs)

    assert laid_out(tower, torch.channels_last)
    loader.save(micro_vlm, tmp_path / "m")
    again = loader.load(tmp_path / "m").model.model.visual
    assert laid_out(again, torch.channels_last)
    images = [torch.randn(3, 112, 84), torch.randn(3, 112, 84)]
    with torch.no_grad():
        fast, reader = again.feature_maps(images), again.reader_maps(images)
        monkeypatch.setattr(vision, "CHANNELS_LAST", False)
        again.lay_out()
        assert laid_out(again, torch.contiguous_format)
        plain, plain_reader = again.feature_maps(images), again.reader_maps(images)
    pairs = zip(fast + reader, plain + plain_reader, strict=True)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in pairs)


def test_probes_run_in_the_probe_dtype_only_when_inferring_and_the_decoders_images_never(
        micro_vlm: loader.VLM, monkeypatch: pytest.MonkeyPatch) -> None:
    tower = micro_vlm.model.model.visual
    images = [torch.randn(3, 112, 84), torch.randn(3, 112, 84)]
    with torch.inference_mode():
        plain = tower.feature_maps(images)
    autocast: list[bool] = []
    run = tower.backbone
    monkeypatch.setattr(tower, "backbone",
                        lambda x: autocast.append(torch.is_autocast_enabled("cpu")) or run(x))
    monkeypatch.setattr(tower, "probe_dtype", torch.bfloat16)
    with torch.inference_mode():
        seen, probed = tower.feature_maps(images), tower.feature_maps(images, probe=True)
    assert autocast == [False, True]
    assert all(torch.equal(a, b) for a, b in zip(seen, plain, strict=True))  # what the decoder sees
    for p, a in zip(probed, plain, strict=True):  # bfloat16 maps, handed back in the tower's dtype
        assert p.dtype == a.dtype and not torch.equal(p, a)
        assert (p - a).abs().max() <= 0.05 * a.abs().max()
    trained = tower.feature_maps(images, probe=True)  # with gradients (training): never lowered
    assert autocast[-1] is False
    assert all(torch.equal(t.detach(), a) for t, a in zip(trained, plain, strict=True))


def test_the_tower_precision_is_bfloat16_only_where_asked_or_native(
        micro_vlm: loader.VLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from foveal.model import vision
    tower = micro_vlm.model.model.visual
    assert loader.set_tower_precision(micro_vlm, "float32") is None and tower.probe_dtype is None
    assert loader.set_tower_precision(micro_vlm, "bfloat16") is torch.bfloat16
    for native in (False, True):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        expected = torch.bfloat16 if native else None
        assert vision.fast_low_precision("cpu") is expected
        assert loader.set_tower_precision(micro_vlm, "auto") is expected
    with pytest.raises(ValueError, match="tower precision"):
        loader.set_tower_precision(micro_vlm, "float16")
    loader.save(micro_vlm, tmp_path / "m")
    assert loader.load(tmp_path / "m", tower_precision="float32").model.model.visual.probe_dtype is None
    assert loader.load(tmp_path / "m").model.model.visual.probe_dtype is torch.bfloat16  # native, patched
