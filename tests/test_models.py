"""Models, tokenization and the tensors between them, on a tiny scratch GPT-2 (1 layer, 32 wide, 300 tokens).

Encoder and collate (encoding.py), response log-probs (logprobs.py), reward scores under padding
(reward_model.py), batched left-padded generation (generation.py), LoRA on GPT-2's Conv1D projections and
the save_pretrained/from_pretrained round trip (model/loading.py).
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from preftune.data.encoding import Encoder, Sequence, collate, left_pad, length_batches
from preftune.model import adapters, loading
from preftune.model.generation import generate_answers
from preftune.model.logprobs import full_vocab_token_logprobs, sequence_logprobs, token_logprobs
from preftune.model.reward_model import load_reward_model, score
from preftune.pipeline.errors import ConfigError, UserError

CPU = torch.device("cpu")


@pytest.fixture
def model(base_model):
    """A private copy: tests that wrap or train a model must not touch the shared one."""
    return copy.deepcopy(base_model)


@pytest.fixture(scope="module")
def pair_sequences(generated, tok):
    """Encoded chosen and rejected answers of the first pairs: prompts and answers of varied lengths."""
    encode = Encoder(tok, 128)
    rows = generated["pairs"][:6]
    return [encode(r["prompt"], r[k]) for r in rows for k in ("chosen", "rejected")]


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# --- the tokenizer itself ------------------------------------------------------------------------------

def test_scratch_tokenizer_has_distinct_pad_and_eos(tok):
    assert len(tok) == 300
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.bos_token_id == tok.eos_token_id
    assert tok.padding_side == "right"


# --- Encoder ---------------------------------------------------------------------------------------------

def test_encoder_prompt_is_prefix_and_eos_last(generated, tok):
    encode = Encoder(tok, 1024)  # no truncation here: with 300 tokens some rambling answers pass 128
    for row in generated["pairs"]:
        for kind in ("chosen", "rejected"):
            seq = encode(row["prompt"], row[kind])
            prompt_ids = ids(tok, row["prompt"])
            assert list(seq.ids[: seq.prompt_len]) == prompt_ids
            assert seq.prompt_len == len(prompt_ids)
            assert seq.ids[-1] == tok.eos_token_id
            assert seq.response_len >= 1
            # The response tokens decode back to the response (the prompt ends at a pre-token boundary).
            assert tok.decode(list(seq.ids[seq.prompt_len:-1])) == row[kind]
    # The grammar task's prompts end in "Answer:" and answers start with a space: never a merge.
    assert encode.stats() == {"boundary_merges": 0, "truncated": 0}


def test_encoder_empty_response_is_just_eos(tok):
    encode = Encoder(tok, 128)
    seq = encode("Answer:", "")
    assert list(seq.ids[seq.prompt_len:]) == [tok.eos_token_id]
    assert seq.response_len == 1


def test_encoder_punctuation_then_letters_is_not_a_merge(tok):
    """"Answer:" + "yes": byte-level BPE pre-tokenizes ':' and 'yes' apart, so no token crosses the
    boundary; the whole-text tokenization is kept and nothing is counted."""
    encode = Encoder(tok, 128)
    assert ids(tok, "Answer:yes")[: len(ids(tok, "Answer:"))] == ids(tok, "Answer:")
    seq = encode("Answer:", "yes")
    assert list(seq.ids) == ids(tok, "Answer:yes") + [tok.eos_token_id]
    assert seq.prompt_len == len(ids(tok, "Answer:"))
    assert encode.boundary_merges == 0


def test_encoder_forced_boundary_merge(tok):
    """Letters on both sides of the boundary: " th" + "e" tokenizes as " the" together, so the prompt's ids
    are not a prefix of the whole text's. The encoder falls back to prompt ids + response ids and counts it."""
    prompt, response = "Answer: th", "e"
    p_ids, r_ids, whole = ids(tok, prompt), ids(tok, response), ids(tok, prompt + response)
    assert whole[: len(p_ids)] != p_ids, "the tokenizer did not merge across the boundary; pick another pair"
    encode = Encoder(tok, 128)
    seq = encode(prompt, response)
    assert encode.boundary_merges == 1
    assert list(seq.ids[: seq.prompt_len]) == p_ids
    assert seq.prompt_len == len(p_ids)
    assert list(seq.ids[seq.prompt_len:]) == r_ids + [tok.eos_token_id]
    # A second merge is counted again; a clean row is not.
    encode("Fix the gram", "mar")
    encode("Answer:", " yes")
    assert encode.stats()["boundary_merges"] == 2


def test_encoder_truncates_long_prompt_from_the_left_keeping_eos(tok):
    prompt = "Fix the grammar: " + "the cat and the dog " * 20 + "\nAnswer:"
    response = " They go."
    encode = Encoder(tok, 32)
    seq = encode(prompt, response)
    full_prompt, r_ids = ids(tok, prompt), ids(tok, response)
    assert len(full_prompt) + len(r_ids) + 1 > 32
    assert len(seq.ids) == 32
    assert seq.ids[-1] == tok.eos_token_id
    assert list(seq.ids[seq.prompt_len:]) == r_ids + [tok.eos_token_id]  # the response is whole
    assert list(seq.ids[: seq.prompt_len]) == full_prompt[-seq.prompt_len:]  # the prompt's end is kept
    assert encode.stats() == {"boundary_merges": 0, "truncated": 1}
    encode("Answer:", " yes")  # short rows are not counted
    assert encode.truncated == 1


def test_encoder_cuts_a_long_response_without_eos(tok):
    """A cut answer must not teach the model to stop there: no EOS after it, as prepare cuts answers."""
    encode = Encoder(tok, 16)
    response = " the cat and the dog" * 10
    seq = encode("Answer:", response)
    assert len(seq.ids) == 16 and seq.prompt_len >= 1 and seq.response_len >= 1
    assert encode.truncated == 1
    assert tok.eos_token_id not in seq.ids and list(seq.ids[seq.prompt_len:]) == ids(tok, response)[:seq.response_len]


def test_encoder_truncation_keeps_half_the_length_for_a_long_prompt(tok):
    """A long prompt before a long answer keeps its last max_length // 2 tokens (not one token), the answer the rest."""
    encode = Encoder(tok, 16)
    prompt = "Fix the grammar: the cat and the dog went home\nAnswer:"
    seq = encode(prompt, " the cat and the dog" * 10)
    assert len(seq.ids) == 16 and seq.prompt_len == 8
    assert list(seq.ids[:8]) == ids(tok, prompt)[-8:]
    assert encode.truncated == 1


# --- collate ---------------------------------------------------------------------------------------------

def test_collate_masks_from_lengths(pair_sequences, tok):
    seqs = pair_sequences
    batch = collate(seqs, tok.pad_token_id)
    width = max(len(s.ids) for s in seqs)
    assert batch["input_ids"].shape == (len(seqs), width)
    assert len({len(s.ids) for s in seqs}) > 1, "want sequences of different lengths"
    for b, s in enumerate(seqs):
        n = len(s.ids)
        assert batch["input_ids"][b, :n].tolist() == list(s.ids)
        assert (batch["input_ids"][b, n:] == tok.pad_token_id).all()
        assert batch["attention_mask"][b].tolist() == [1] * n + [0] * (width - n)
        assert torch.nonzero(batch["response_mask"][b]).flatten().tolist() == list(range(s.prompt_len, n))
    assert batch["response_mask"].dtype == torch.bool


def test_collate_pad_equal_to_eos_still_masks_the_final_eos(tok):
    """A tokenizer whose pad is its EOS (GPT-2's usual hack): the mask comes from lengths, so the real final EOS
    of each row is a response token and the padding EOSes after it are not."""
    eos = tok.eos_token_id
    short = Sequence((5, 6, 7, 8, eos), 3)
    long = Sequence((5, 6, 7, 8, 9, 10, 11, 12, eos), 4)
    batch = collate([short, long], pad_id=eos)
    assert batch["input_ids"][0].tolist() == [5, 6, 7, 8, eos, eos, eos, eos, eos]
    assert batch["response_mask"][0].tolist() == [False] * 3 + [True] * 2 + [False] * 4
    assert batch["response_mask"][1].tolist() == [False] * 4 + [True] * 5
    assert batch["attention_mask"][0].tolist() == [1] * 5 + [0] * 4
    # The shifted mask that scores tokens keeps the EOS target of the short row.
    shifted = batch["response_mask"][:, 1:]
    assert shifted[0].tolist() == [False] * 2 + [True] * 2 + [False] * 4
    assert shifted[0].sum() == short.response_len


def test_length_batches_cap_sequences_and_padded_positions():
    lengths = [5, 300, 40, 1024, 7, 600, 600, 2, 130, 90] * 3
    seqs = [Sequence(tuple(range(n)), 1) for n in lengths]
    batches = length_batches(seqs, batch_size=4, max_tokens=1200)
    assert sorted(i for b in batches for i in b) == list(range(len(seqs)))  # every sequence once
    for b in batches:
        width = len(seqs[b[0]].ids)
        assert width == max(len(seqs[i].ids) for i in b)  # longest first within and across batches
        assert len(b) <= 4 and (len(b) == 1 or len(b) * width <= 1200)
    assert [len(b) for b in batches][:3] == [1, 1, 1]  # 1,024 tokens: alone, however many fit the count
    assert length_batches(seqs, batch_size=64, max_tokens=10**9) == [sorted(range(30), key=lambda i: (-lengths[i], i))]


def test_left_pad_aligns_the_last_prompt_token(tok):
    batch = left_pad([[3, 4], [5, 6, 7, 8]], tok.pad_token_id)
    p = tok.pad_token_id
    assert batch["input_ids"].tolist() == [[p, p, 3, 4], [5, 6, 7, 8]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


# --- log-probs -------------------------------------------------------------------------------------------

def hand_logprobs(model, seq: Sequence) -> list[float]:
    """log softmax(logits[t-1])[ids[t]] for each response position t of one unpadded sequence (float64)."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([seq.ids])).logits[0]
    logps = F.log_softmax(logits.double(), dim=-1)
    return [logps[t - 1, seq.ids[t]].item() for t in range(seq.prompt_len, len(seq.ids))]


def test_sequence_logprobs_equal_a_hand_loop_over_unpadded_sequences(base_model, pair_sequences, tok):
    seqs = pair_sequences
    assert len({len(s.ids) for s in seqs}) > 1 and len({s.prompt_len for s in seqs}) > 1
    batch = collate(seqs, tok.pad_token_id)
    with torch.no_grad():
        sums, counts = sequence_logprobs(base_model, batch)
        per_token, mask = token_logprobs(base_model, batch)
    assert sums.shape == counts.shape == (len(seqs),)
    assert counts.tolist() == [float(s.response_len) for s in seqs]
    hand = [hand_logprobs(base_model, s) for s in seqs]
    # Token by token, padded batch vs unpadded single sequence: within 1e-5.
    for b, s in enumerate(seqs):
        got = per_token[b][mask[b]]
        torch.testing.assert_close(got, torch.tensor(hand[b], dtype=torch.float32), atol=1e-5, rtol=0)
        assert torch.nonzero(mask[b]).flatten().tolist() == list(range(s.prompt_len - 1, len(s.ids) - 1))
    # Summed: an untrained 300-token model gives ~-5.7 per token, so a 100-token sum is ~-570, where one
    # float32 ulp is 6e-5; 1e-5 plus a relative 1e-6 is float32 summation noise, nothing more.
    expected = torch.tensor([sum(h) for h in hand], dtype=torch.float32)
    torch.testing.assert_close(sums, expected, atol=1e-5, rtol=1e-6)
    # And the same batch padded with EOS instead of PAD: masks come from lengths, so nothing changes.
    with torch.no_grad():
        sums_eos, counts_eos = sequence_logprobs(base_model, collate(seqs, tok.eos_token_id))
    torch.testing.assert_close(sums_eos, sums, atol=1e-5, rtol=1e-6)
    assert torch.equal(counts_eos, counts)


def test_sequence_logprobs_of_short_sequences_within_1e_5(base_model, tok):
    """Short responses keep the sums small enough for a plain 1e-5 bound."""
    encode = Encoder(tok, 128)
    seqs = [encode("Answer:", " yes"), encode("Fix the grammar: cats runs.\nAnswer:", " Cats run."),
            encode("Fix the grammar: the dog and the cat is big.\nAnswer:", " No.")]
    with torch.no_grad():
        sums, counts = sequence_logprobs(base_model, collate(seqs, tok.pad_token_id))
    expected = torch.tensor([sum(hand_logprobs(base_model, s)) for s in seqs], dtype=torch.float32)
    torch.testing.assert_close(sums, expected, atol=1e-5, rtol=0)
    assert counts.tolist() == [float(s.response_len) for s in seqs]


def test_token_logprobs_are_zero_off_the_response(base_model, pair_sequences, tok):
    batch = collate(pair_sequences, tok.pad_token_id)
    with torch.no_grad():
        logps, mask = token_logprobs(base_model, batch)
    assert logps.shape == mask.shape == (len(pair_sequences), batch["input_ids"].shape[1] - 1)
    assert (logps[~mask] == 0).all()
    assert (logps[mask] < 0).all()


# --- reward scores under padding -------------------------------------------------------------------------

def test_reward_score_does_not_depend_on_padding(base_model, tok, tmp_path, pair_sequences):
    base_model.save_pretrained(tmp_path / "sft")
    tok.save_pretrained(tmp_path / "sft")
    torch.manual_seed(1)
    rm = load_reward_model(str(tmp_path / "sft")).eval()
    assert rm.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
    short = min(pair_sequences, key=lambda s: len(s.ids))
    long = max(pair_sequences, key=lambda s: len(s.ids))
    assert len(long.ids) > 2 * len(short.ids)
    longer = long
    with torch.no_grad():
        alone = score(rm, [short], tok.pad_token_id, CPU)
        batched = score(rm, [short, longer], tok.pad_token_id, CPU)
        longer_alone = score(rm, [longer], tok.pad_token_id, CPU)
    assert alone.shape == (1,) and batched.shape == (2,)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[1], longer_alone[0], atol=1e-5, rtol=0)
    assert abs(alone[0].item() - longer_alone[0].item()) > 1e-6  # the head reads something real


def test_reward_score_with_pad_equal_to_eos_reads_the_same_last_token(base_model, tok, tmp_path, pair_sequences):
    """A pretrained tokenizer often has PAD == EOS: the head still reads each sequence's own final EOS,
    found from lengths, so the scores equal those of a distinct PAD."""
    base_model.save_pretrained(tmp_path / "sft")
    torch.manual_seed(1)
    rm = load_reward_model(str(tmp_path / "sft")).eval()
    with torch.no_grad():
        with_pad = score(rm, pair_sequences, tok.pad_token_id, CPU)
        with_eos = score(rm, pair_sequences, tok.eos_token_id, CPU)
    torch.testing.assert_close(with_eos, with_pad, atol=1e-5, rtol=0)


# --- log-probs chunk by chunk ----------------------------------------------------------------------------

def tiny_llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("chunk", [5, 10_000])  # many chunks, and one
@pytest.mark.parametrize("adapter", [True, False])  # a frozen head (its gradient in one pass), a trained one
def test_chunked_logprobs_equal_the_plain_computation_in_value_and_gradient(model, tok, pair_sequences, arch, chunk,
                                                                            adapter):
    net = model if arch == "gpt2" else tiny_llama(len(tok))
    if adapter:
        net = adapters.attach_lora(net, 4, 8, 0.0, "all-linear")
        with torch.no_grad():  # a nonzero adapter, so that gradients reach both LoRA factors
            for n, p in net.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.1)
    assert net.get_output_embeddings().weight.requires_grad is not adapter
    batch = collate(pair_sequences, tok.pad_token_id)
    grads = []
    for compute in (full_vocab_token_logprobs, lambda m, b: token_logprobs(m, b, chunk_tokens=chunk)[0]):
        net.zero_grad(set_to_none=True)
        logps = compute(net, batch)
        (logps.sum(-1) * torch.linspace(1, 2, len(pair_sequences))).sum().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.requires_grad})
        if compute is full_vocab_token_logprobs:
            expected = logps.detach()
        else:
            torch.testing.assert_close(logps.detach(), expected, atol=2e-5, rtol=1e-5)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 4
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=2e-5, rtol=1e-4, msg=name)


def test_chunked_logprobs_never_build_the_whole_vocabulary_projection(tok, pair_sequences):
    """The largest float tensor saved for backward is one chunk's logits, not batch x length x vocabulary."""
    net = tiny_llama(4096).train()
    batch = collate(pair_sequences, tok.pad_token_id)
    saved = []

    def pack(t):
        saved.append(t.numel() if t.is_floating_point() else 0)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        token_logprobs(net, batch, chunk_tokens=8)[0].sum().backward()
    full = batch["input_ids"].numel() * 4096
    assert max(saved) < full / 4, (max(saved), full)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        full_vocab_token_logprobs(net, batch).sum().backward()
    assert max(saved) >= full * 0.9  # the check would have caught the plain computation


def test_bits_dropout_keeps_nn_dropouts_distribution_and_replays_under_checkpointing():
    drop = adapters.BitsDropout(0.05).train()
    x = torch.ones(1000, 1000, requires_grad=True)
    y = drop(x)
    kept = (y != 0).float().mean().item()
    assert abs(kept - 0.95) < 5 * (0.05 * 0.95 / x.numel()) ** 0.5  # five standard errors
    assert y.unique().tolist() == [0.0, pytest.approx(1 / 0.95)]
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() / 0.95)  # the gradient is the mask, scaled
    state = torch.get_rng_state()
    first = drop(x)
    torch.set_rng_state(state)
    assert torch.equal(drop(x), first)  # the mask comes from torch's CPU generator: checkpointing replays it
    assert torch.equal(drop.eval()(x), x)


def test_attach_lora_uses_bits_dropout(model):
    drops = [m for m in adapters.attach_lora(model, 4, 8, 0.1, "auto").modules() if isinstance(m, torch.nn.Dropout)
             and type(m) is not torch.nn.Dropout]
    assert drops and all(isinstance(m, adapters.BitsDropout) and m.p == 0.1 for m in drops)


# --- LoRA targets and model.base --------------------------------------------------------------------------

def test_lora_targets_by_architecture(model, tok):
    assert adapters.lora_targets(model, "auto") == ["c_attn", "c_proj"]
    assert adapters.lora_targets(model, "all-linear") == ["c_attn", "c_fc", "c_proj"]  # never the output head
    assert adapters.lora_targets(tiny_llama(len(tok)), "auto") == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert adapters.lora_targets(model, ["c_attn"]) == ["c_attn"]
    with pytest.raises(ConfigError, match="auto, all-linear or a list"):
        adapters.lora_targets(model, "everything")


@pytest.mark.parametrize("base, needle", [
    ("package:no_such_package_here/model.gguf", "no installed package 'no_such_package_here'"),
    ("package:pytest/missing.gguf", "GGUF file"),
    ("models/none.gguf", "GGUF file 'models/none.gguf' not found"),
])
def test_bad_model_base_is_a_config_error(base, needle):
    with pytest.raises(ConfigError, match="model.base") as err:
        loading.resolve_base(base)
    assert needle in str(err.value)


# --- generation ------------------------------------------------------------------------------------------

def test_batched_left_padded_greedy_equals_one_at_a_time(base_model, tok, generated):
    prompts = [r["prompt"] for r in generated["gold"][:5]] + ["Answer:", "Fix the grammar: cats runs.\nAnswer:"]
    assert len({len(ids(tok, p)) for p in prompts}) >= 3, "want prompts of different lengths"
    batched = generate_answers(base_model, tok, prompts, max_new_tokens=10, batch_size=64)
    alone = generate_answers(base_model, tok, prompts, max_new_tokens=10, batch_size=1)
    assert batched == alone
    assert len(batched) == len(prompts) and all(isinstance(a, str) for a in batched)
    assert any(a for a in batched)  # not all empty: the comparison says something


# --- LoRA ------------------------------------------------------------------------------------------------

def test_attach_lora_on_gpt2_is_fan_in_fan_out_and_a_no_op_at_step_0(model, pair_sequences, tok):
    batch = collate(pair_sequences, tok.pad_token_id)
    with torch.no_grad():
        base_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lora = adapters.attach_lora(model, 8, 16, 0.0, ["c_attn", "c_proj"])
    assert lora.peft_config["default"].fan_in_fan_out is True
    assert set(lora.peft_config["default"].target_modules) == {"c_attn", "c_proj"}
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    lora_b = [p for n, p in lora.named_parameters() if "lora_B" in n]
    assert lora_b and all((p == 0).all() for p in lora_b)
    lora.eval()
    with torch.no_grad():
        lora_logits = lora(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        with lora.disable_adapter():
            disabled = lora(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(lora_logits, base_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(disabled, base_logits, atol=1e-6, rtol=0)


def test_lora_update_matches_its_merged_weights(model, pair_sequences, tok):
    """With B nonzero the adapter's forward equals the forward of the merged weights: the Conv1D orientation
    (fan_in_fan_out) is right, including the square c_proj where a transposed update would still run."""
    batch = collate(pair_sequences, tok.pad_token_id)
    lora = adapters.attach_lora(model, 4, 8, 0.0, ["c_attn", "c_proj"]).eval()
    torch.manual_seed(2)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
        adapted = lora(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        merged = lora.merge_and_unload()
        merged_logits = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(adapted, merged_logits, atol=1e-4, rtol=1e-4)


def test_attach_lora_with_unmatched_target_is_a_config_error(model):
    with pytest.raises(ConfigError, match=r"dpo\.lora\.target_modules") as err:
        adapters.attach_lora(model, 8, 16, 0.0, ["q_proj", "v_proj"])
    assert "c_attn" in str(err.value)  # it suggests the model's real linear layers


# --- save / load round trip ------------------------------------------------------------------------------

def test_save_pretrained_round_trip(base_model, tok, tmp_path, pair_sequences):
    out = tmp_path / "model"
    base_model.save_pretrained(out)
    tok.save_pretrained(out)
    loaded_tok = loading.load_tokenizer(str(out))
    loaded = loading.load_causal_lm(str(out)).eval()
    assert loaded_tok.pad_token_id == tok.pad_token_id
    assert loaded_tok.eos_token_id == tok.eos_token_id
    assert loaded_tok.pad_token_id != loaded_tok.eos_token_id
    assert loaded_tok.padding_side == "right"
    assert loaded.config.pad_token_id == tok.pad_token_id
    assert loaded.config.eos_token_id == tok.eos_token_id
    assert len(loaded_tok) == len(tok)
    text = "Fix the grammar: Them forget a kite.\nAnswer: They forget a kite."
    assert ids(loaded_tok, text) == ids(tok, text)
    batch = collate(pair_sequences, tok.pad_token_id)
    with torch.no_grad():
        before = base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        after = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert loaded.dtype == torch.float32
    assert torch.equal(before, after)


def test_loading_a_missing_model_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="model.base"):
        loading.load_tokenizer(str(tmp_path / "nothing-here"))
    with pytest.raises(ConfigError, match="model.base"):
        loading.load_causal_lm(str(tmp_path / "nothing-here"))


@pytest.mark.slow  # a model built and saved in subprocesses under two hash seeds
def test_saved_adapter_config_does_not_depend_on_the_hash_seed(tmp_path, model):
    """peft stores target_modules as a set; its order must not leak into adapter_config.json."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    base = tmp_path / "base"
    model.save_pretrained(base)
    script = (
        "import sys; sys.path.insert(0, 'stages')\n"
        "from preftune.model.adapters import attach_lora\nfrom preftune.model.loading import load_causal_lm\n"
        f"m = attach_lora(load_causal_lm({str(base)!r}), 4, 8, 0.0, ['c_proj', 'c_attn'])\n"
        "m.save_pretrained(sys.argv[1])\n")
    texts = []
    for seed in ("1", "2", "3"):
        out = tmp_path / f"adapter{seed}"
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, cwd=Path(__file__).resolve().parents[1],
                       env={**os.environ, "PYTHONHASHSEED": seed})
        texts.append((out / "adapter_config.json").read_text())
    assert texts[0] == texts[1] == texts[2]


def test_saved_tokenizer_config_does_not_record_the_environment(tmp_path, tok):
    """Under HF_HUB_OFFLINE=1 (as setup.sh runs) from_pretrained notes local_files_only=True; a re-saved
    tokenizer must not carry it, or models/ would depend on how the stage was launched."""
    import json

    tok.save_pretrained(tmp_path / "a")
    reloaded = loading.load_tokenizer(str(tmp_path / "a"))
    reloaded.save_pretrained(tmp_path / "b")
    config = json.loads((tmp_path / "b" / "tokenizer_config.json").read_text())
    assert not {"local_files_only", "_commit_hash", "token"} & set(config)


# --- broken pipeline outputs -----------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_broken_model_output_says_dvc_checkout(base_model, tok, tmp_path, monkeypatch, damage):
    """A truncated or missing models/sft/model.safetensors is one line naming the file's folder and the fix."""
    monkeypatch.chdir(tmp_path)
    base_model.save_pretrained("models/sft")
    tok.save_pretrained("models/sft")
    weights = tmp_path / "models" / "sft" / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        weights.unlink()
    for load in (loading.load_causal_lm, load_reward_model):
        with pytest.raises(UserError) as err:
            load("models/sft")
        message = str(err.value)
        assert message.startswith("models/sft: cannot load this ") and "\n" not in message
        assert message.endswith("restore it with `dvc checkout models/sft` or rebuild it with `dvc repro`")
