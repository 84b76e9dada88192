"""Test helper: a tiny, deterministic SentencePiece model trained on embedded prose.

`train_tiny_spm(dirpath, vocab_size=...)` writes `dirpath/tokenizer.model` and returns its path.
The trainer settings mirror Llama-style tokenizers (BPE, identity normalization, dummy prefix,
whitespace runs kept, digits split, byte fallback), so anything the tests do with it exercises the
same code paths as a real model's tokenizer.model. Control ids: unk=0, bos=1, eos=2, no pad.

Byte fallback reserves 256 byte pieces plus one piece per distinct training character, so the
vocabulary cannot be smaller than MIN_VOCAB_SIZE.
"""
import io
import os

import sentencepiece as spm

# Varied English prose: dialogue, numbers, punctuation, a few accented words (so that some
# multi-byte characters are whole pieces while CJK and emoji go through byte fallback).
CORPUS = """\
The old lighthouse keeper climbed the spiral stairs every evening at half past six.
He counted the steps out loud, one hundred and twelve of them, because his father had done the same.
"Nothing changes up here," he told the gulls, "except the weather and the price of kerosene."
On clear nights he could see the lights of three villages and a ferry crossing the bay.
In winter the wind pressed against the glass so hard that the whole tower seemed to hum.
Maria ran the bakery on the corner of Harbour Street and Mill Lane.
She opened at 5:30 in the morning and sold bread, rolls, and a dense rye loaf that sailors loved.
Her café served strong coffee, and visitors often asked for a crème brûlée she did not make.
"Try the apple cake instead," she would say, smiling, and most of them did.
By noon the shelves were nearly empty; by two o'clock she was sweeping the floor.
A small school stood at the top of the hill, with twenty-four pupils and two teachers.
The children learned arithmetic, geography, music, and how to read the tide tables.
Once a year they walked down to the harbour to watch the boats being painted.
Their teacher, a patient man named Ellis, kept a jar of shells on his desk for good behaviour.
When it rained, which was often, they played chess and argued about the rules.
Science begins with questions that sound naive: why is the sky blue, why does bread rise?
Light from the sun is scattered by the air, and shorter wavelengths scatter the most.
Yeast eats sugar and releases carbon dioxide, which makes small bubbles in the dough.
Good experiments are simple, repeatable, and honest about what they cannot show.
A measurement without an error bar is only half a measurement.
The train to the city left at 7:15, 9:40, and 16:05, and it was rarely on time.
Commuters read newspapers, answered messages, or simply watched the fields go by.
The journey took ninety minutes, or two hours if a cow wandered onto the track.
Tickets cost 12 pounds return, though students paid less with a valid card.
At the terminus, pigeons waited for crumbs beneath the great iron roof.
Writing a program is a little like building a boat: small mistakes let the water in.
Functions should do one thing, names should say what they mean, and tests should fail loudly.
She read the error message twice, then laughed, because the bug was a missing comma.
Version 2.0 shipped on a Friday afternoon, which everyone agreed was a brave decision.
Later they wrote a short résumé of the project for the archive: fast, careful, and slightly late.
In the garden, tomatoes ripened slowly along the south wall.
The beans climbed their poles, the lettuce bolted, and the snails ate whatever they pleased.
Grandmother kept a notebook of sowing dates, rainfall, and the first frost of every year.
Her handwriting was small and neat; her opinions about slugs were neither.
Every autumn she saved seeds in paper envelopes labelled with the year and a single word.
The storm arrived just after midnight, rattling shutters and bending the pines.
Waves broke over the sea wall and flooded the lower road for several hours.
By morning the sky was washed clean, and the beach was covered in seaweed and driftwood.
People came out with buckets and cameras, talking quietly, as if after a long illness.
The lighthouse keeper wrote one line in his log: wind north-west, force nine, all well.
Questions, answers, numbers like 3, 14, 159 and 2718; dates like 1999 and 2024.
What matters most is not speed but direction; what matters next is patience.
"""

MIN_VOCAB_SIZE = 256 + 3 + len(set(CORPUS.replace("\n", ""))) + 1  # bytes, controls, chars, "▁"

_cache: dict = {}


def _train(vocab_size: int, model_type: str, user_defined_symbols: tuple = ()) -> bytes:
    key = (vocab_size, model_type, user_defined_symbols)
    if key not in _cache:
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(CORPUS.splitlines()),
            model_writer=out,  # keeps paths out of the serialized trainer spec: same bytes anywhere
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            hard_vocab_limit=model_type != "unigram",  # unigram on a few KB cannot fill large vocabs
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            user_defined_symbols=list(user_defined_symbols),  # ids 3, 4, ... in this order
            num_threads=1,  # multi-threaded training is not reproducible
            minloglevel=2,
        )
        _cache[key] = out.getvalue()
    return _cache[key]


def train_tiny_spm(dirpath, vocab_size: int = 384, model_type: str = "bpe",
                   user_defined_symbols=()) -> str:
    """Train (or reuse) the tiny model and write it to `dirpath/tokenizer.model`; returns that path.

    `user_defined_symbols` (e.g. "<|im_start|>") become single pieces with ids 3, 4, ... that
    plain-text encoding always keeps whole, like a chat model's turn markers."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE} with byte fallback, got {vocab_size}")
    os.makedirs(dirpath, exist_ok=True)
    path = os.path.join(os.fspath(dirpath), "tokenizer.model")
    with open(path, "wb") as f:
        f.write(_train(vocab_size, model_type, tuple(user_defined_symbols)))
    return path
