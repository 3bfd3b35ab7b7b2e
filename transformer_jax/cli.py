"""`transformer-jax` command line: train, eval, decode.

    transformer-jax train  --config configs/default.py --workdir DIR [--config.KEY=VALUE ...]
    transformer-jax eval   --workdir DIR [--config ...] [--checkpoint latest|best] [--quantize int8]
    transformer-jax decode --workdir DIR [--input FILE] [--beam_size 4]   (stdin -> stdout: translations,
                           or continuations of prompts for a causal-LM workdir [--max_new_tokens 64])
                           [--quantize int8|bfloat16|float16]
    transformer-jax decode --pretrained DIR [--input FILE] [--beam_size 4] [--max_new_tokens 64]
    transformer-jax predict --workdir DIR --input FILE --output OUT.jsonl   (a fine-tuned task's
                           predictions, one JSON line per input record: label and scores, entities,
                           answer span, generated text)
    transformer-jax export --workdir DIR --output OUT [--adapters] [--family bert] [--tokenizer DIR]
                           (a Hugging Face model directory, LoRA merged; --adapters: PEFT adapters)
    transformer-jax attention --pretrained DIR | --workdir DIR --text "..." [--target "..."]
                           [--output attn.png] [--json attn.json] [--layer 0,1] [--head 2]
                           (a layers x heads grid of attention weights; transformer_jax/attention_view.py)

Config files are ml_collections `get_config()` files; `--config.a.b=v` overrides a field
(`transformer-jax train --help [--config FILE]` lists them all). Attention specs are strings:
--config.model.encoder_attention='Windowed(128)'. Ctrl-C (or SIGTERM) during training saves a
checkpoint and exits (status 130 for Ctrl-C, 143 for SIGTERM: not finished); the same command resumes.
Multi-host: pass --coordinator HOST:PORT --num_processes N --process_id I (or rely on the
cluster's environment, which `jax.distributed.initialize()` reads).
"""

from __future__ import annotations

import os
import sys

USAGE = __doc__
COMMANDS = ("train", "eval", "decode", "predict", "export", "attention")
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py")
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
EXIT_TERMINATED = 143  # 128 + SIGTERM: a preempted job (checkpoint saved), never mistaken for a finished one


def _config_path(argv: list[str]) -> str | None:
    path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if path is None and "--config" in argv and argv.index("--config") + 1 < len(argv):
        path = argv[argv.index("--config") + 1]
    return path


def _parse(argv: list[str]):
    """absl FlagValues for `argv` (raises absl/ml_collections errors as they come)."""
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "experiment config file (get_config())", flag_values=fv,
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl, TensorBoard, eval.json", flag_values=fv)
    flags.DEFINE_string("input", "-", "decode: file of source lines ('-': stdin)", flag_values=fv)
    flags.DEFINE_string("output", "", "predict: the JSON Lines file to write; export: the directory to write",
                        flag_values=fv)
    flags.DEFINE_integer("beam_size", 0, "decode: beam size (0: config.decode.beam_size)", flag_values=fv)
    flags.DEFINE_string("pretrained", None, "decode: a Hugging Face model directory (translate or continue)",
                        flag_values=fv)
    flags.DEFINE_integer("max_new_tokens", 0, "decode a causal LM or --pretrained: tokens to generate (0: "
                         "the model's generation_config, else 64)", flag_values=fv)
    flags.DEFINE_float("temperature", 0.0, "decode --pretrained: sampling temperature (0: greedy)", flag_values=fv)
    flags.DEFINE_integer("top_k", 0, "decode --pretrained: sample among the k most likely tokens (0: all)",
                         flag_values=fv)
    flags.DEFINE_float("top_p", 1.0, "decode --pretrained: nucleus sampling mass (1: all)", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "decode --pretrained: sampling seed", flag_values=fv)
    flags.DEFINE_float("repetition_penalty", 1.0, "decode --pretrained: penalty on tokens already present "
                       "(1: off)", flag_values=fv)
    flags.DEFINE_integer("no_repeat_ngram_size", 0, "decode --pretrained: ban repeated n-grams of this size "
                         "(0: off)", flag_values=fv)
    flags.DEFINE_integer("min_new_tokens", 0, "decode --pretrained: no EOS before this many tokens", flag_values=fv)
    flags.DEFINE_integer("num_return_sequences", 1, "decode --pretrained: outputs per input line (sampling or "
                         "beams), printed one per line", flag_values=fv)
    flags.DEFINE_multi_string("stop", [], "decode --pretrained: stop string (repeatable): the output ends "
                              "before its first occurrence", flag_values=fv)
    flags.DEFINE_string("compilation_cache", None, "JAX's persistent compilation cache directory (default "
                        "$TRANSFORMER_JAX_COMPILATION_CACHE or ~/.cache/transformer_jax/xla; '' turns it off)",
                        flag_values=fv)
    flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "eval/decode: which checkpoint", flag_values=fv)
    flags.DEFINE_string("quantize", "", "eval/decode: run on weight-only quantized parameters (int8 per output "
                        "channel, or bfloat16 / float16 casts; transformer_jax/quantization.py)", flag_values=fv)
    flags.DEFINE_bool("adapters", False, "export: LoRA adapters in PEFT's layout instead of the merged model",
                      flag_values=fv)
    flags.DEFINE_string("family", None, "export: the family to save as (default: the one init_from loaded)",
                        flag_values=fv)
    flags.DEFINE_string("tokenizer", None, "export: the directory to copy tokenizer files from (default: "
                        "<workdir>/tokenizer, else init_from)", flag_values=fv)
    flags.DEFINE_string("coordinator", None, "multi-host: coordinator address host:port", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "multi-host: number of processes", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "multi-host: this process's index", flag_values=fv)
    saved_argv, sys.argv = sys.argv, ["transformer-jax", *argv]  # config_flags reads overrides from sys.argv
    try:
        rest = fv(["transformer-jax", *argv])
    finally:
        sys.argv = saved_argv
    if len(rest) > 1:
        raise SystemExit(f"error: unexpected arguments {rest[1:]}")
    return fv


def _override_keys(argv: list[str]) -> list[str]:
    """'model.d_model' for each --config.model.d_model[=v] override, in order."""
    return [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]


def unknown_key_message(argv: list[str], config_path: str) -> str | None:
    """The error for the first override whose key the config lacks, naming that flag and the valid
    keys there (None when every override's key exists)."""
    from ml_collections import ConfigDict

    base = _parse([f"--config={config_path}"]).config
    for key in _override_keys(argv):
        node, parts = base, key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, ConfigDict) or part not in node:
                where = ".".join(["config", *parts[:depth]])
                valid = ", ".join(node.keys()) if isinstance(node, ConfigDict) else f"none ({where} is a value)"
                return f"error: unknown config key in --config.{key}: {where} has no {part!r}; valid: {valid}"
            node = node[part]
    return None


def _flags(argv: list[str]):
    from absl import flags

    config_path = _config_path(argv)
    if config_path is not None and not os.path.isfile(config_path.split(":")[0]):
        raise SystemExit(f"error: --config={config_path!r}: no such file")
    try:
        return _parse(argv)
    except SyntaxError as err:  # the config file is not Python (IndentationError included)
        raise SystemExit(f"error: --config={config_path!r}: {err.filename}:{err.lineno}: {err.msg} "
                         f"({type(err).__name__})") from None
    except (AttributeError, KeyError) as err:  # ml_collections: unknown override key (or a config bug)
        try:
            message = unknown_key_message(argv, config_path)
        except Exception:  # the config file itself fails to load
            message = None
        raise SystemExit(message or f"error: --config={config_path!r}: {type(err).__name__}: {err}") from None
    except flags.Error as err:
        raise SystemExit(f"error: {_named_config_error(str(err)) or err}") from None


def _named_config_error(message: str) -> str | None:
    """A config file's own named error (`ValueError: config.x ...`, e.g. from `model_section`), which
    config_flags wraps in the whole traceback; None for anything else (a bug: keep the traceback)."""
    last = (message.strip().splitlines() or [""])[-1]
    return last.removeprefix("ValueError: ") if last.startswith("ValueError: config.") else None


def config_lines(config, prefix: str = "config") -> list[str]:
    """`--config.KEY=DEFAULT` for every leaf of a ConfigDict."""
    from ml_collections import ConfigDict

    lines = []
    for key in config.keys():
        value = config[key]
        if isinstance(value, ConfigDict):
            lines += config_lines(value, f"{prefix}.{key}")
        else:
            lines.append(f"  --{prefix}.{key}={value!r}")
    return lines


def _help(command: str, argv: list[str]) -> None:
    print(USAGE)
    if command != "train":
        return
    path = _config_path(argv) or DEFAULT_CONFIG
    if not os.path.isfile(path.split(":")[0]):
        return
    config = _flags([f"--config={path}"]).config
    print(f"Config keys and their values in {path} (override with --config.KEY=VALUE):")
    print("\n".join(config_lines(config)))


def _maybe_distributed(fv) -> None:
    import jax

    if fv.coordinator or fv.num_processes:
        jax.distributed.initialize(coordinator_address=fv.coordinator, num_processes=fv.num_processes,
                                   process_id=fv.process_id)


def _train(fv) -> int:
    from transformer_jax.train import loop

    if fv.config is None:
        raise SystemExit("error: train needs --config FILE")
    summary = loop.train(fv.config, fv.workdir)
    if summary.get("signal") == "SIGINT":
        print(f"interrupted: saved the checkpoint of step {summary['step']} in {fv.workdir}; "
              "run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if summary.get("preempted"):
        print(f"terminated ({summary.get('signal') or 'a stop signal on another process'}): saved the checkpoint "
              f"of step {summary['step']} in {fv.workdir}; run the same command to resume", file=sys.stderr)
        return EXIT_TERMINATED
    return 0


def _trained_config(fv):
    """--config if given, else the one `train` saved; the workdir must hold a checkpoint."""
    from transformer_jax.train import loop

    workdir = fv.workdir
    if not os.path.exists(workdir):
        raise FileNotFoundError(f"--workdir={workdir!r} does not exist; train there first")
    if not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir!r} is a file, not a directory")
    if not loop.has_checkpoint(workdir):
        raise FileNotFoundError(f"--workdir={workdir!r} holds no checkpoint; train there first")
    return fv.config if fv.config is not None else loop.load_config(workdir)


def _check_quantize(fv) -> None:
    from transformer_jax.quantization import DTYPES

    if fv.quantize and fv.quantize not in DTYPES:
        raise ValueError(f"--quantize={fv.quantize!r} is not one of {', '.join(DTYPES)}")


def _run_params(fv, s, state) -> tuple[object, dict]:
    """The parameters eval/decode run on (with LoRA: merged), quantized with --quantize; and their
    bytes beside the unquantized ones."""
    from transformer_jax import quantization

    params = s.eval_params(state)
    sizes = {"parameter_bytes": quantization.tree_bytes(params)}
    if fv.quantize:
        sizes["unquantized_bytes"] = sizes["parameter_bytes"]
        params = quantization.quantize({"params": params}, fv.quantize)
        sizes.update(quantize=fv.quantize, parameter_bytes=params.nbytes)
        print(f"{fv.quantize}: {sizes['parameter_bytes']:,} parameter bytes "
              f"({sizes['unquantized_bytes']:,} unquantized)", file=sys.stderr)
    return params, sizes


def _eval(fv) -> int:
    """The eval split's loss/accuracy/perplexity and the task's end-of-run metric on the test split,
    written to eval.json (eval_<dtype>.json with --quantize)."""
    import jax

    from transformer_jax.train import loop

    from transformer_jax.train import experiment

    _check_quantize(fv)
    config = _trained_config(fv)
    s, state, step = loop.restore_for_eval(config, fv.workdir, which=fv.checkpoint)
    params, sizes = _run_params(fv, s, state)
    result = {"step": step, **sizes}
    iterator = loop.make_data_iterator(config, config.data.eval_split, s.tokenizer, repeat=False, task=s.task)
    synthetic = config.data.dataset == experiment.SYNTHETIC and not config.get("task", "")
    # the synthetic stream never ends: score config.eval_batches of it (10 when 0 = "all")
    result.update(loop.evaluate_loss(s, params, iterator, config.eval_batches or (10 if synthetic else 0)))
    if not synthetic:  # (no test split to score: as train does, the synthetic task ends at the loss)
        final = loop.final_eval(s, params, config.data.test_split)  # BLEU, accuracy or perplexity
        print(loop.summary_line(final))
        result["test"] = final
    print({k: v for k, v in result.items() if k != "test"})
    if jax.process_index() == 0:
        name = f"eval_{fv.quantize}.json" if fv.quantize else "eval.json"
        loop.write_json_atomic(os.path.join(fv.workdir, name), result)
    return 0


def _read_lines(path: str) -> list[str]:
    """The input's lines (without line ends: "\r\n" too); bytes that are not UTF-8 are a named error
    giving the file (or stdin) and the line."""
    name = "stdin" if path == "-" else path
    if path == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
    else:
        with open(path, "rb") as f:
            data = f.read()
    lines = data.splitlines()
    for number, line in enumerate(lines, 1):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"--input={name}: line {number} is not UTF-8 text (byte {err.start + 1}: "
                             f"{line[err.start:err.start + 1]!r}); decode reads UTF-8") from None
    return [line.decode("utf-8") for line in lines]


def _warn_cut_lines(lines: list[str], tokenizer, src_len: int, shown: int = 5) -> None:
    """Say which source lines are longer than the model reads (translation cuts them to
    max_src_len - 1 tokens and EOS, as in training), instead of cutting in silence."""
    long = [(i, n) for i, line in enumerate(lines, 1) if (n := len(tokenizer.encode(line))) > src_len - 1]
    for i, n in long[:shown]:
        print(f"warning: --input line {i} has {n} tokens; the model reads {src_len - 1} "
              f"(config.data.max_src_len={src_len} with EOS): the rest is cut", file=sys.stderr)
    if len(long) > shown:
        print(f"warning: {len(long) - shown} more --input lines are cut to {src_len - 1} tokens", file=sys.stderr)


def _decode_pretrained(fv) -> int:
    """Translate or continue each input line with a Hugging Face model directory."""
    import transformer_jax as tj
    from transformer_jax.pretrained.text import generate_text

    if fv.max_new_tokens < 0:
        raise ValueError(f"--max_new_tokens={fv.max_new_tokens} must be >= 0 (0: the model's generation_config)")
    model, variables = tj.from_pretrained(fv.pretrained)
    tokenizer = tj.load_tokenizer(fv.pretrained)
    config = tj.load_generation_config(fv.pretrained)
    n = fv.max_new_tokens or config.max_new_tokens or 64
    sampling = dict(temperature=fv.temperature, top_k=fv.top_k, top_p=fv.top_p, seed=fv.seed,
                    repetition_penalty=fv.repetition_penalty, no_repeat_ngram_size=fv.no_repeat_ngram_size,
                    min_new_tokens=fv.min_new_tokens, num_return_sequences=fv.num_return_sequences,
                    stop_strings=tuple(fv.stop))
    lines = _read_lines(fv.input)  # after the directory loaded (its errors first), before any compile
    for line in generate_text(model, variables, tokenizer, lines, generation_config=config,
                              max_new_tokens=n, beam_size=fv.beam_size or 1, **sampling):
        print(line)
    return 0


def _decode(fv) -> int:
    from transformer_jax import tasks
    from transformer_jax.train import evaluate, experiment, loop

    if fv.beam_size < 0:
        raise ValueError(f"--beam_size={fv.beam_size} must be a positive integer (0: config.decode.beam_size)")
    if fv.max_new_tokens < 0:
        raise ValueError(f"--max_new_tokens={fv.max_new_tokens} must be >= 0 (0: the default)")
    if fv.input != "-" and not os.path.isfile(fv.input):
        raise FileNotFoundError(f"--input={fv.input!r}: no such file")
    _check_quantize(fv)
    if fv.pretrained:
        if fv.quantize:
            raise ValueError("--quantize applies to --workdir; with --pretrained use tj.quantize from Python")
        return _decode_pretrained(fv)
    config = _trained_config(fv)
    if config.data.dataset == experiment.SYNTHETIC and not config.get("task", ""):
        raise ValueError(f"decode reads and writes text, but --workdir={fv.workdir!r} was trained on "
                         f"config.data.dataset='synthetic' (token ids, no tokenizer); use `eval` there, or "
                         "decode a workdir trained on a text dataset")
    task = experiment.config_task(config)
    if not isinstance(task, (tasks.Translation, tasks.CausalLM)) or isinstance(task, tasks.MaskedLM):
        raise ValueError(f"decode translates (a translation task) or continues prompts (a causal LM); "
                         f"config.data.dataset={config.data.dataset!r} is a {task.name} task")
    lines = _read_lines(fv.input)  # before restoring: bad input is named first
    s, state, _ = loop.restore_for_eval(config, fv.workdir, which=fv.checkpoint)
    params, _ = _run_params(fv, s, state)
    dc = config.decode
    predictor = evaluate.predictor(s, params)
    if isinstance(task, tasks.Translation):
        _warn_cut_lines(lines, s.tokenizer, config.data.max_src_len)
        outputs = tasks.translate(predictor, lines, beam_size=fv.beam_size or dc.beam_size,
                                  max_len=min(dc.max_len, s.model.cfg.max_len), length_penalty=dc.length_penalty,
                                  batch_size=dc.batch_size, src_len=config.data.max_src_len)
    else:
        outputs = tasks.continue_text(predictor, lines, max_new_tokens=fv.max_new_tokens or dc.max_len,
                                      beam_size=fv.beam_size or 1, batch_size=dc.batch_size)
    for line in outputs:
        print(line)
    return 0


def _predict(fv) -> int:
    """A fine-tuned task's predictions for each record of --input (the task's own columns; labels and
    answers may be absent), one JSON line each in --output."""
    import json

    import jax

    from transformer_jax.train import evaluate, loop
    from transformer_jax.train.build import file_source

    if not fv.output:
        raise ValueError("predict needs --output OUT.jsonl")
    if fv.input == "-" or not os.path.isfile(fv.input):
        raise FileNotFoundError(f"--input={fv.input!r}: no such file (a JSONL, JSON, CSV, TSV or text file)")
    config = _trained_config(fv)
    if not config.get("task", ""):
        raise ValueError("predict runs a fine-tuned task (config.task); for translation or a language model "
                         "of a built-in dataset use decode")
    s, state, _ = loop.restore_for_eval(config, fv.workdir, which=fv.checkpoint)
    params, _ = _run_params(fv, s, state)
    roles = getattr(s.task, "predict_roles", ())
    optional = getattr(s.task, "predict_optional", s.task.optional_roles)
    with config.unlocked():
        config.data.predict_files = fv.input
    source = file_source(config, "predict", s.task, roles=roles, optional=optional)
    records = [source[i] for i in range(len(source))]
    if fv.beam_size:
        with config.unlocked():
            config.decode.beam_size = fv.beam_size
    lines = s.task.predict(evaluate.predictor(s, params), records, evaluate.settings(s))
    if jax.process_index() == 0:
        with open(fv.output, "w") as f:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"{len(lines)} predictions -> {fv.output}", file=sys.stderr)
    return 0


def _export(fv) -> int:
    from transformer_jax.train.export import export_workdir

    if not fv.output:
        raise ValueError("export needs --output DIR (the Hugging Face directory to write)")
    out = export_workdir(fv.workdir, fv.output, adapters=fv.adapters, family=fv.family, tokenizer=fv.tokenizer,
                         which=fv.checkpoint)
    print(f"exported {fv.workdir} -> {out}" + (" (PEFT adapters)" if fv.adapters else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, argv = argv[0], argv[1:]
    if command not in COMMANDS:
        raise SystemExit(f"error: unknown command {command!r}; valid: {', '.join(COMMANDS)}\n{USAGE}")
    if command == "attention":  # its own flags and logic
        from transformer_jax import attention_view

        return attention_view.main(argv)
    if any(a in ("-h", "--help", "-help") for a in argv):
        _help(command, argv)
        return 0
    fv = _flags(argv)
    if fv.pretrained and command != "decode":
        raise SystemExit(f"error: --pretrained is for decode; {command} takes --workdir")
    if fv.quantize and command == "train":
        raise SystemExit("error: --quantize is for eval and decode (a trained workdir); train runs in float32")
    if not fv.workdir and not (command == "decode" and fv.pretrained):
        raise SystemExit("error: --workdir is required" + (" (or --pretrained DIR)" if command == "decode" else ""))
    _maybe_distributed(fv)
    if fv.compilation_cache != "":
        from transformer_jax.compilation_cache import enable_compilation_cache

        enable_compilation_cache(fv.compilation_cache)

    from transformer_jax.train import loop

    run = {"train": _train, "eval": _eval, "decode": _decode, "predict": _predict, "export": _export}[command]
    try:
        return run(fv)
    except (ValueError, FileNotFoundError, loop.NonFiniteError) as err:
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
