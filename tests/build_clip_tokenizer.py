"""Builds modelscope_sdxl/loading/single_file_configs/clip_tokenizer/ from OpenAI CLIP's BPE merges file.

Not a test: it records how the shipped tokenizer files were made. The source is
``bpe_simple_vocab_16e6.txt.gz`` of OpenAI CLIP (MIT License, Copyright (c) 2021 OpenAI), which also
ships inside PyPI's ``open_clip_torch`` wheel (``open_clip/bpe_simple_vocab_16e6.txt.gz``). The
vocabulary is built as CLIP's SimpleTokenizer builds it: the 256 byte characters, the same with
``</w>``, the first 49152-256-2 merges joined, then ``<|startoftext|>`` and ``<|endoftext|>``:
49,408 tokens. merges.txt keeps the source's ``#version: 0.2`` header line (transformers' readers
skip the first line) and those merges.

    python tests/build_clip_tokenizer.py path/to/bpe_simple_vocab_16e6.txt.gz

``--verify path/to/open_clip`` (the package folder of the unpacked wheel; ftfy and regex importable)
compares transformers' CLIPTokenizer on the built files with open_clip's SimpleTokenizer, whose
module file is loaded alone (the open_clip package is not imported), on a few hundred varied texts.
"""
import gzip
import json
import os
import sys
from typing import Dict, List

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   'modelscope_sdxl', 'loading', 'single_file_configs', 'clip_tokenizer')
MERGES = 49152 - 256 - 2


def bytes_to_unicode() -> Dict[int, str]:
    """CLIP's (and GPT-2's) reversible map of the 256 byte values to printable characters."""
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(range(ord('®'), ord('ÿ') + 1))
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def vocabulary(merges: List[str]) -> List[str]:
    """The token list, in id order, that SimpleTokenizer builds from the merges."""
    chars = list(bytes_to_unicode().values())
    return chars + [c + '</w>' for c in chars] + [''.join(m.split()) for m in merges] + [
        '<|startoftext|>', '<|endoftext|>']


def build(source: str, out: str = OUT) -> None:
    lines = gzip.open(source).read().decode('utf-8').split('\n')
    merges = lines[1:MERGES + 1]
    assert len(merges) == MERGES and all(len(m.split()) == 2 for m in merges)
    tokens = vocabulary(merges)
    assert len(tokens) == len(set(tokens)) == 49408
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'vocab.json'), 'w', encoding='utf-8') as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f, ensure_ascii=False)
    with open(os.path.join(out, 'merges.txt'), 'w', encoding='utf-8', newline='\n') as f:
        f.write('#version: 0.2\n' + '\n'.join(merges) + '\n')
    special = {'bos_token': '<|startoftext|>', 'eos_token': '<|endoftext|>', 'unk_token': '<|endoftext|>',
               'pad_token': '<|endoftext|>'}
    with open(os.path.join(out, 'special_tokens_map.json'), 'w', encoding='utf-8') as f:
        json.dump(special, f, indent=2)
        f.write('\n')
    config = dict(special, tokenizer_class='CLIPTokenizer', model_max_length=77, do_lower_case=True,
                  errors='replace', add_prefix_space=False)
    with open(os.path.join(out, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
        json.dump(config, f, indent=2)
        f.write('\n')


def texts(count: int = 400) -> List[str]:
    """Hand-written texts (prompts, punctuation, accents, scripts, emoji, long words, numbers) and
    seeded random ones drawn from a mix of alphabets."""
    import random

    fixed = [
        'a photo of a cat', 'A red circle on a blue background', 'hello, world!', "it's, we're, I'll, they'd",
        '(masterpiece:1.2), best quality, [ugly], ((sharp focus))', 'a dog; a cat: a bird? yes!!! ...',
        'Pneumonoultramicroscopicsilicovolcanoconiosis', 'supercalifragilisticexpialidocious' * 3,
        'Crème brûlée à la française, naïve café', 'Ünïcödé Ströme über Äpfel', 'straße GROSS Σίσυφος',
        '東京の夜景、ネオン', '一只在草地上奔跑的小狗', '서울의 밤거리', 'Москва зимой, снег', 'مدينة في الصحراء',
        'a 🐱 and a 🐶 under 🌈', 'emoji 👨‍👩‍👧 family 🇯🇵 flag', 'mathematics: ∑ ∫ √ ≈ ≠ ∞ π',
        'price $1,234.56 at 12:30pm on 2023-10-05', '3.14159265358979 and 1e-10 and 0x1F', 'user@example.com https://a.b/c?d=e#f',
        'snake_case_name and camelCaseName and kebab-case-name', 'tabs\tand\nnewlines   and    spaces',
        'quotes "double" \'single\' `back`', 'a/b\\c|d<e>f{g}h[i]j~k^l%m', 'C++ C# F# .NET node.js',
        '8k uhd, dslr, soft lighting, high quality, film grain, Fujifilm XT3', '    leading and trailing    ',
        'ALL CAPS PROMPT WITH SHOUTING', 'x' * 300, 'ab' * 80, 'word ' * 90, '!?' * 40,
        'ﬁne ligature', 'full-width ＡＢＣ１２３', 'e\u0301 combining accent vs é', 'Ω ohm vs Ω omega', 'ı dotless İ dotted',
        'Ꭰ Cherokee ᚠ runes 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math', '\u00a0non breaking\u2009thin space', 'zero\u200bwidth',
    ]
    alphabets = ['abcdefghijklmnopqrstuvwxyz', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', '0123456789', ' ' * 12,
                 ".,;:!?'-()[]{}<>/_*&^%$#@+=~`|", 'àáâäãåæçèéêëìíîïñòóôöøùúûüýÿœß', 'αβγδεζηθικλμνξοπρστυφχψω',
                 'абвгдежзийклмнопрстуфхцчшщыэюя', 'あいうえおかきくけこアイウエオ漢字日本語中文', '🙂🎨🌅🐉✨🔥',
                 'אבגדהוזחטיכלמנסעפצקרשת', 'ابتثجحخدذرزسشصضطظعغفقكلمنهوي']
    rng = random.Random(1234)
    generated = []
    while len(fixed) + len(generated) < count:
        mix = ''.join(rng.choice(alphabets) for _ in range(rng.randint(1, 4)))
        generated.append(''.join(rng.choice(mix) for _ in range(rng.randint(1, 120))))
    return fixed + generated


def verify(open_clip_dir: str, out: str = OUT) -> None:
    import importlib.util

    from transformers import CLIPTokenizer, CLIPTokenizerFast

    spec = importlib.util.spec_from_file_location('clip_simple_tokenizer', os.path.join(open_clip_dir, 'tokenizer.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference = module.SimpleTokenizer(os.path.join(open_clip_dir, 'bpe_simple_vocab_16e6.txt.gz'))
    ours = {name: cls.from_pretrained(out) for name, cls in (('CLIPTokenizer', CLIPTokenizer),
                                                              ('CLIPTokenizerFast', CLIPTokenizerFast))}
    with open(os.path.join(out, 'vocab.json'), encoding='utf-8') as f:
        vocab = json.load(f)
    # open_clip names the two special tokens <start_of_text>/<end_of_text>; transformers' CLIP, OpenAI's names.
    specials = {'<start_of_text>': '<|startoftext|>', '<end_of_text>': '<|endoftext|>'}
    assert vocab == {specials.get(t, t): i for t, i in reference.encoder.items()}, 'vocabulary differs'
    all_texts = texts()
    raw_differs = 0
    for text in all_texts:
        expected = [49406] + reference.encode(text) + [49407]
        cleaned = reference.clean_fn(text)
        for name, tokenizer in ours.items():
            # transformers' CLIP tokenizer does not run ftfy/html.unescape; on the cleaned text the ids must be equal.
            assert tokenizer(cleaned).input_ids == expected, (name, text)
            ids = tokenizer(text).input_ids
            if ids != expected:
                assert cleaned != ' '.join(text.split()).lower(), (name, text)  # only cleaning differs
                raw_differs += name == 'CLIPTokenizer'
                print('differs before cleaning:', repr(text), '->', repr(cleaned)) if name == 'CLIPTokenizer' else None
            decoded = tokenizer.decode(expected, skip_special_tokens=True)
            assert decoded == reference.decode(expected[1:-1]).strip(), (name, text)
            assert tokenizer(decoded).input_ids == expected, (name, text)  # round trip
    print(f'{len(all_texts)} texts: ids equal on the cleaned text, decode equal, round trip equal; '
          f'{raw_differs} raw texts differ only by ftfy/html cleaning')


if __name__ == '__main__':
    if sys.argv[1] == '--verify':
        verify(sys.argv[2])
    else:
        build(sys.argv[1])
