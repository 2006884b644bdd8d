#!/usr/bin/env python3
"""Golden files for frugal's byte-level BPE tokenizer, produced by the Hugging Face `tokenizers`
library itself (written for 0.23; any 0.2x with train_from_iterator works).

Usage (where `tokenizers` is installed, e.g. the GPU machine; no GPU and no network needed):

    python3 tools/make_tokenizer_golden.py --data ../shared/data --out golden_tok
    python3 tools/make_tokenizer_golden.py --data DIR --out OUT --quick     # small cases only
    python3 tools/make_tokenizer_golden.py --data DIR --out OUT --skip-32k  # no 32K figures

`--data` holds the zstd corpora of shared/data (read with the `zstandard` module when present,
else `zstd -dc`). Everything goes to `--out`:

    OUT/<case>.tokenizer.json  the tokenizer trained by tokenizers (tokenizer.save(pretty=False))
    OUT/<case>.samples.json    how it was trained, its bytes/token on an eval slice, and samples:
                               text, ids without and with add_special_tokens, tokenizers' decode of
                               the ids (with and without skip_special_tokens)
    OUT/figures.json           bytes/token of a 32K vocabulary trained on gutenberg_en_train and
                               measured on gutenberg_en_val, training time, and encode throughput
                               of tokenizers (encode_batch, 1 thread and all threads)
    OUT/extra/                 the 32K tokenizer.json and its samples: too large to commit, keep
                               them out of tests/golden/tokenizers/ (only figures.json goes in)

Commit OUT/*.tokenizer.json, OUT/*.samples.json and OUT/figures.json under
tests/golden/tokenizers/ (the script checks that they total < 3 MB). frugal's
tests/data/test_tokenizer_golden.cc reads every <case>.tokenizer.json with its <case>.samples.json.

Cases (vocab_size counts the special tokens; all use BpeTrainer(min_frequency=0,
initial_alphabet=ByteLevel.alphabet()), ByteLevel decoder, TemplateProcessing adding the BOS):
    en_gpt2_2k       GPT-2 ByteLevel regex, 2048, gutenberg_en_train first 4 MB, specials
                     <|bos|> <|endoftext|> <|pad|>
    zh_deepseek_4k   DeepSeek-V3 Split sequence + ByteLevel(use_regex=False), 4096,
                     zh_four_classic_novels first 6 MB, DeepSeek's eight specials
    mixed_nfc_3k     NFC normalizer, DeepSeek splits, 3072, tinyshakespeare + zh_modern_sample first
                     2 MB, DeepSeek specials, plus added tokens with lstrip/rstrip/single_word/
                     normalized flags
    en_deepseek_8k   DeepSeek splits, 8192, gutenberg_en_train first 8 MB, DeepSeek specials
    en_deepseek_16k  DeepSeek splits, 16384, gutenberg_en_train first 16 MB, DeepSeek specials
    deepseek_32k     (extra/) DeepSeek splits, 32000, all of gutenberg_en_train: the figures

Training documents, exactly (frugal's golden test retrains from the same bytes): each file is
decompressed, cut to its first `prefix_bytes` bytes (0 = all) and then after the last b"\\n",
decoded as UTF-8 (errors="replace"), split on "\\n<|endoftext|>\\n", empty pieces dropped; the files'
documents are concatenated in order and passed to train_from_iterator.

Throughput: the text is gutenberg_en_val cut into pieces of at most 64 KiB after a newline (the
pieces build/bench_tokenizer uses); each setting runs in a child process with RAYON_NUM_THREADS
set (rayon reads it once), warms up on 64 pieces and reports the best of 3 timed
encode_batch calls (and encode_batch_fast when the version has it).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

SEPARATOR = "\n<|endoftext|>\n"
DEEPSEEK_SPECIALS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<｜fim▁begin｜>",
                     "<｜fim▁hole｜>", "<｜fim▁end｜>", "<｜User｜>", "<｜Assistant｜>"]
GPT2_SPECIALS = ["<|bos|>", "<|endoftext|>", "<|pad|>"]
# DeepSeek-V3's three Split patterns (its tokenizer.json; "\r" and "\n" are the characters).
DEEPSEEK_PATTERNS = [
    "\\p{N}{1,3}",
    "[一-龥\u3040-ゟ゠-ヿ]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+|"
    " ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
]
MAX_COMMITTED_BYTES = 3_000_000


# ----------------------------------------------------------------------------------------------
# Corpora


def read_raw(data_dir, name):
    path = os.path.join(data_dir, name)
    if not os.path.exists(path):
        sys.exit(f"missing corpus file {path}")
    try:
        import zstandard  # noqa: PLC0415

        with open(path, "rb") as f:
            return zstandard.ZstdDecompressor().stream_reader(f).read()
    except ImportError:
        return subprocess.run(["zstd", "-dc", path], check=True, capture_output=True).stdout


_RAW_CACHE = {}


def read_text(data_dir, name, prefix_bytes=0):
    if name not in _RAW_CACHE:
        _RAW_CACHE[name] = read_raw(data_dir, name)
    raw = _RAW_CACHE[name]
    if prefix_bytes and len(raw) > prefix_bytes:
        raw = raw[:prefix_bytes]
        cut = raw.rfind(b"\n")
        if cut >= 0:
            raw = raw[: cut + 1]
    return raw.decode("utf-8", errors="replace")


def documents(data_dir, files):
    docs = []
    for spec in files:
        text = read_text(data_dir, spec["name"], spec["prefix_bytes"])
        docs.extend(d for d in text.split(SEPARATOR) if d)
    return docs


def chunk_pieces(docs, max_bytes=64 * 1024):
    """Pieces of at most max_bytes UTF-8 bytes, cut after a newline (bench_tokenizer's rule)."""
    pieces = []
    for doc in docs:
        data = doc.encode("utf-8")
        start = 0
        while start < len(data):
            end = min(len(data), start + max_bytes)
            if end < len(data):
                newline = data.rfind(b"\n", start, end)
                if newline >= start:
                    end = newline + 1
            pieces.append(data[start:end].decode("utf-8", errors="replace"))
            start = end
    return pieces


# ----------------------------------------------------------------------------------------------
# Samples


def real_snippets(data_dir):
    """Paragraph-sized snippets (<= 400 characters) from held-out parts of the corpora."""
    sources = [("gutenberg_en_val.txt.zst", 12), ("tinyshakespeare.txt.zst", 5),
               ("tinystories_valid_sample.txt.zst", 4), ("zh_modern_sample.txt.zst", 5),
               ("zh_four_classic_novels.txt.zst", 4)]
    out = []
    for name, count in sources:
        text = read_text(data_dir, name)
        for k in range(count):
            # From 60% to 99% of the file: past the training prefixes used below.
            start = int(len(text) * (0.6 + 0.39 * k / max(1, count - 1)))
            paragraph = text.find("\n\n", start)
            start = paragraph + 2 if paragraph >= 0 else start
            snippet = text[start:start + 400]
            if "<|endoftext|>" in snippet:
                snippet = snippet.split("<|endoftext|>")[0]
            if snippet.strip():
                out.append({"kind": "real", "name": f"{name.split('.')[0]}#{k}", "text": snippet})
    return out


def hard_cases(specials):
    bos, eos = specials[0], specials[1]
    other = specials[-1]
    cases = {
        "empty": "",
        "emoji": "I ❤️ pizza 🍕!! 😀😃😄",
        "emoji_zwj_family": "family: 👨‍👩‍👧‍👦 and 👩‍💻 coder",
        "emoji_skin_tones": "👍🏽 👋🏿 🤝🏻 thumbs",
        "emoji_flags_keycaps": "🇺🇸🇯🇵🇫🇷 1️⃣2️⃣#️⃣",
        "combining_marks": "cafe\u0301 vs café, n\u0303, A\u030a\u0301",
        "zalgo": "Z\u0335\u0321\u0322\u0349a\u0336l\u0337g\u0338o\u0335",
        "devanagari_thai": "नमस्ते दुनिया, สวัสดีครับ",
        "korean": "안녕하세요 한국어 \u1100\u1161\u11a8 jamo",
        "mixed_scripts": "Hello世界Привет123مرحباΓειά",
        "japanese": "カタカナとひらがなと漢字、ＡＢＣ１２３。",
        "rtl": "שלום עולם! مرحبا بالعالم 2024 \u200fRTL\u200e mark",
        "long_digits": "31415926535897932384626433832795028841971693993751",
        "number_formats": "1,234,567.89 v3.14.159 -0.5e-10 ½ ¾ Ⅻ २०२४ ٣٤٥",
        "tabs": "a\tb\t\tc\t\t\t\n\t\n",
        "newlines": "line1\nline2\r\nline3\rline4\n\n\n\nend",
        "leading_trailing_spaces": "   leading and trailing   ",
        "space_runs": "a  b   c    d\n    indented\n\tmixed \t \n",
        "nbsp": "NBSP\u00a0here\u00a0\u00a0x and narrow\u202fnbsp",
        "unicode_spaces": "ideographic\u3000space\u2028line\u2029para\u2003em\u180emongolian\u200bzw",
        "only_whitespace": " \t\n \u00a0 ",
        "specials_in_text": f"{bos}Hello{eos}",
        "specials_adjacent": f"x{other}{other}y {eos} {eos}",
        "special_partial": f"{bos[:-1]} half {eos[1:]}",
        "special_in_word": f"pre{eos}post",
        "very_long_word": "a" * 3000,
        "long_repeated": "supercalifragilistic" * 40,
        "long_two_words": "x" * 1000 + " " + "y" * 1000,
        "url": "https://example.com/path/to/page?query=value&x=1#frag",
        "code": "def f(x):\n    return x**2  # square\n\nif __name__ == '__main__':\n\tprint(f(3))\n",
        "json": '{"key": [1, 2, {"a": null, "b": "c\\"d"}], "n": -1.5e3}',
        "contractions": "Don't I'm we'll they've you'd She'S IT'LL",
        "caps": "ALL CAPS SHOUTING and MiXeD CaSe",
        "dashes_quotes": "hyphen-ated—em dash – en dash “smart” ‘single’ «guillemets»",
        "math": "∑∫√∞≠≤≥ x² + y³ = z⁴ α β γ",
        "control_chars": "nul\x00bell\x07esc\x1bdel\x7f end",
        "replacement_char": "U+FFFD \ufffd replacement \ufffd\ufffd",
        "math_letters": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕕𝕠𝕦𝕓𝕝𝕖",
        "punct_runs": "!!! ??? ... ,,, ;;; --- ___ ***",
        "apostrophes": "'s 't 're 've 'm 'll 'd 'S",
        "mask_token_flags": "a <mask> b  <mask>  c flavour flavourful café cafe\u0301",
        "cjk_punct_mix": "他说：“你好！”然后走了。1984年，北京。",
    }
    return [{"kind": "hard", "name": k, "text": v} for k, v in cases.items()]


# ----------------------------------------------------------------------------------------------
# Tokenizers


def build_tokenizer(tk, pre_kind, nfc):
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers  # noqa: PLC0415

    tok = tk.Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    if pre_kind == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True,
                                                     use_regex=True)
    else:
        steps = [pre_tokenizers.Split(Regex(p), behavior="isolated", invert=False) for p in DEEPSEEK_PATTERNS]
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False))
        tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_case(tk, data_dir, case):
    from tokenizers import AddedToken, pre_tokenizers, processors, trainers  # noqa: PLC0415

    tok = build_tokenizer(tk, case["pre_tokenizer"], case["nfc"])
    docs = documents(data_dir, case["files"])
    trainer = trainers.BpeTrainer(vocab_size=case["vocab_size"], min_frequency=case["min_frequency"],
                                  show_progress=False, special_tokens=case["special_tokens"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    start = time.perf_counter()
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    seconds = time.perf_counter() - start
    bos = case["special_tokens"][0]
    bos_id = tok.token_to_id(bos)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B:1", special_tokens=[(bos, bos_id)])
    for extra in case.get("added_tokens", []):
        token = AddedToken(extra["content"], single_word=extra["single_word"], lstrip=extra["lstrip"],
                           rstrip=extra["rstrip"], normalized=extra["normalized"])
        tok.add_tokens([token])
    return tok, docs, seconds


def bytes_per_token(tok, data_dir, eval_spec):
    docs = documents(data_dir, [eval_spec])
    encodings = tok.encode_batch(docs, add_special_tokens=False)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    n_tokens = sum(len(e.ids) for e in encodings)
    return {"file": eval_spec["name"], "prefix_bytes": eval_spec["prefix_bytes"], "documents": len(docs),
            "bytes": n_bytes, "tokens": n_tokens, "bytes_per_token": n_bytes / n_tokens}


def sample_records(tok, samples):
    out = []
    for s in samples:
        ids = tok.encode(s["text"], add_special_tokens=False).ids
        ids_special = tok.encode(s["text"], add_special_tokens=True).ids
        out.append({**s, "ids": ids, "ids_with_special": ids_special,
                    "decoded": tok.decode(ids, skip_special_tokens=False),
                    "decoded_with_special": tok.decode(ids_special, skip_special_tokens=False),
                    "decoded_skip_special": tok.decode(ids_special, skip_special_tokens=True)})
    return out


def run_case(tk, args, case, snippets, directory):
    tok, docs, seconds = train_case(tk, args.data, case)
    path = os.path.join(directory, f"{case['name']}.tokenizer.json")
    tok.save(path, pretty=False)
    samples = snippets + hard_cases(case["special_tokens"])
    record = {
        "format": 1,
        "case": case["name"],
        "tokenizers_version": tk.__version__,
        "description": case["description"],
        "training": {k: case[k] for k in ("files", "vocab_size", "min_frequency", "special_tokens",
                                          "pre_tokenizer", "nfc")},
        "training_documents": len(docs),
        "training_seconds": seconds,
        "added_tokens": case.get("added_tokens", []),
        "vocab_size": tok.get_vocab_size(),
        "eval": bytes_per_token(tok, args.data, case["eval"]),
        "samples": sample_records(tok, samples),
    }
    round_trip_failures = [s["name"] for s in record["samples"] if s["decoded"] != s["text"]]
    record["decode_differs_from_text"] = round_trip_failures
    with open(os.path.join(directory, f"{case['name']}.samples.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=False, separators=(",", ":"))
    print(f"  {case['name']:<18} vocab {record['vocab_size']:>6}  {len(docs):>5} docs  "
          f"train {seconds:6.1f} s  bytes/token {record['eval']['bytes_per_token']:.4f}  "
          f"decode != text: {round_trip_failures}", flush=True)
    return record


def cases(quick):
    val = {"name": "gutenberg_en_val.txt.zst", "prefix_bytes": 1_000_000}
    en = "gutenberg_en_train.txt.zst"
    out = [
        {"name": "en_gpt2_2k", "description": "GPT-2 ByteLevel regex, English", "pre_tokenizer": "gpt2",
         "nfc": False, "vocab_size": 2048, "min_frequency": 0, "special_tokens": GPT2_SPECIALS,
         "files": [{"name": en, "prefix_bytes": 4_000_000}], "eval": val},
        {"name": "zh_deepseek_4k", "description": "DeepSeek-V3 splits, Chinese", "pre_tokenizer": "deepseek",
         "nfc": False, "vocab_size": 4096, "min_frequency": 0, "special_tokens": DEEPSEEK_SPECIALS,
         "files": [{"name": "zh_four_classic_novels.txt.zst", "prefix_bytes": 6_000_000}],
         "eval": {"name": "zh_modern_sample.txt.zst", "prefix_bytes": 1_000_000}},
        {"name": "mixed_nfc_3k", "description": "NFC normalizer, DeepSeek splits, English + Chinese, "
         "added tokens with flags", "pre_tokenizer": "deepseek", "nfc": True, "vocab_size": 3072,
         "min_frequency": 0, "special_tokens": DEEPSEEK_SPECIALS,
         "files": [{"name": "tinyshakespeare.txt.zst", "prefix_bytes": 0},
                   {"name": "zh_modern_sample.txt.zst", "prefix_bytes": 2_000_000}],
         "eval": val,
         "added_tokens": [
             {"content": "<mask>", "single_word": False, "lstrip": True, "rstrip": True, "normalized": False},
             {"content": "flavour", "single_word": True, "lstrip": False, "rstrip": False, "normalized": True},
             {"content": "café", "single_word": False, "lstrip": False, "rstrip": False, "normalized": True}]},
        {"name": "en_deepseek_8k", "description": "DeepSeek-V3 splits, English", "pre_tokenizer": "deepseek",
         "nfc": False, "vocab_size": 8192, "min_frequency": 0, "special_tokens": DEEPSEEK_SPECIALS,
         "files": [{"name": en, "prefix_bytes": 8_000_000}], "eval": val},
    ]
    if not quick:
        out.append({"name": "en_deepseek_16k", "description": "DeepSeek-V3 splits, English",
                    "pre_tokenizer": "deepseek", "nfc": False, "vocab_size": 16384, "min_frequency": 0,
                    "special_tokens": DEEPSEEK_SPECIALS, "files": [{"name": en, "prefix_bytes": 16_000_000}],
                    "eval": val})
    return out


# ----------------------------------------------------------------------------------------------
# Throughput (child processes, so that RAYON_NUM_THREADS takes effect)


def throughput_worker(tokenizer_path, pieces_path):
    import tokenizers as tk  # noqa: PLC0415

    tok = tk.Tokenizer.from_file(tokenizer_path)
    with open(pieces_path, encoding="utf-8") as f:
        pieces = json.load(f)
    n_bytes = sum(len(p.encode("utf-8")) for p in pieces)
    result = {"bytes": n_bytes, "pieces": len(pieces)}
    methods = [("encode_batch", tok.encode_batch)]
    if hasattr(tok, "encode_batch_fast"):
        methods.append(("encode_batch_fast", tok.encode_batch_fast))
    for name, method in methods:
        method(pieces[:64], add_special_tokens=False)
        best = float("inf")
        tokens = 0
        for _ in range(3):
            start = time.perf_counter()
            encodings = method(pieces, add_special_tokens=False)
            best = min(best, time.perf_counter() - start)
            tokens = sum(len(e.ids) for e in encodings)
        result[name] = {"seconds": best, "mb_per_s": n_bytes / 1e6 / best, "tokens": tokens}
    print(json.dumps(result))


def measure_throughput(tokenizer_path, pieces, directory):
    pieces_path = os.path.join(directory, "throughput_pieces.json")
    with open(pieces_path, "w", encoding="utf-8") as f:
        json.dump(pieces, f, ensure_ascii=False)
    rows = []
    all_threads = os.cpu_count() or 1
    for threads in sorted({1, all_threads}):
        env = dict(os.environ, RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true")
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--throughput-worker",
                              tokenizer_path, pieces_path], env=env, check=True, capture_output=True,
                             text=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        result["threads"] = threads
        rows.append(result)
    os.remove(pieces_path)
    return rows


# ----------------------------------------------------------------------------------------------


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--throughput-worker":
        throughput_worker(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="directory with the .txt.zst corpora")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help="skip the 16K case")
    parser.add_argument("--skip-32k", action="store_true", help="no 32K training, bytes/token or throughput")
    args = parser.parse_args()
    import tokenizers as tk  # noqa: PLC0415

    os.makedirs(args.out, exist_ok=True)
    extra = os.path.join(args.out, "extra")
    os.makedirs(extra, exist_ok=True)
    print(f"tokenizers {tk.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs",
          flush=True)
    snippets = real_snippets(args.data)
    records = [run_case(tk, args, case, snippets, args.out) for case in cases(args.quick)]

    figures = {"tokenizers_version": tk.__version__, "python": platform.python_version(),
               "machine": platform.machine(), "cpus": os.cpu_count(),
               "cases": {r["case"]: {"vocab_size": r["vocab_size"], "eval": r["eval"],
                                     "training_seconds": r["training_seconds"]} for r in records}}
    if not args.skip_32k:
        case = {"name": "deepseek_32k", "description": "DeepSeek-V3 splits, all of gutenberg_en_train",
                "pre_tokenizer": "deepseek", "nfc": False, "vocab_size": 32000, "min_frequency": 0,
                "special_tokens": DEEPSEEK_SPECIALS,
                "files": [{"name": "gutenberg_en_train.txt.zst", "prefix_bytes": 0}],
                "eval": {"name": "gutenberg_en_val.txt.zst", "prefix_bytes": 0}}
        record = run_case(tk, args, case, snippets, extra)
        figures["bytes_per_token_32k"] = {"train": case["files"], "vocab_size": record["vocab_size"],
                                          "training_seconds": record["training_seconds"],
                                          "eval": record["eval"]}
        val_docs = documents(args.data, [case["eval"]])
        pieces = chunk_pieces(val_docs)
        figures["throughput"] = {
            "tokenizer": "extra/deepseek_32k.tokenizer.json", "text": "gutenberg_en_val.txt.zst in "
            "pieces of <= 64 KiB cut after a newline", "add_special_tokens": False,
            "runs": measure_throughput(os.path.join(extra, "deepseek_32k.tokenizer.json"), pieces, extra)}
    with open(os.path.join(args.out, "figures.json"), "w", encoding="utf-8") as f:
        json.dump(figures, f, ensure_ascii=False, indent=2)

    print("\ncase                vocab  bytes/token (eval slice)  training s")
    for r in records:
        print(f"{r['case']:<18} {r['vocab_size']:>6}  {r['eval']['bytes_per_token']:>10.4f} "
              f"({r['eval']['file']})  {r['training_seconds']:8.1f}")
    if "bytes_per_token_32k" in figures:
        b = figures["bytes_per_token_32k"]
        print(f"\n32K on gutenberg_en_train (training {b['training_seconds']:.1f} s): "
              f"{b['eval']['bytes_per_token']:.4f} bytes/token on gutenberg_en_val")
        print("\nencode throughput        threads     MB/s     seconds")
        for run in figures["throughput"]["runs"]:
            for method in ("encode_batch", "encode_batch_fast"):
                if method in run:
                    print(f"{method:<24} {run['threads']:>7} {run[method]['mb_per_s']:>8.2f} "
                          f"{run[method]['seconds']:>10.3f}")
    committed = [os.path.join(args.out, n) for n in os.listdir(args.out)
                 if n.endswith(".tokenizer.json") or n.endswith(".samples.json") or n == "figures.json"]
    total = sum(os.path.getsize(p) for p in committed)
    print(f"\nfiles to commit: {len(committed)}, {total / 1e6:.2f} MB "
          f"({'OK' if total < MAX_COMMITTED_BYTES else 'OVER the 3 MB budget: use --quick'})")


if __name__ == "__main__":
    main()
