"""`transformer-jax` command line: train, eval, decode.

    transformer-jax train  --config configs/default.py --workdir DIR [--config.KEY=VALUE ...]
    transformer-jax eval   --workdir DIR [--config ...] [--checkpoint latest|best]
    transformer-jax decode --workdir DIR [--input FILE] [--beam_size 4]   (stdin -> stdout)

Config files are ml_collections `get_config()` files; `--config.a.b=v` overrides a field.
Multi-host: pass --coordinator HOST:PORT --num_processes N --process_id I (or rely on the
cluster's environment, which `jax.distributed.initialize()` reads).
"""

from __future__ import annotations

import os
import sys

USAGE = __doc__


def _flags(argv: list[str]):
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "experiment config file (get_config())", flag_values=fv,
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl, TensorBoard, eval.json", flag_values=fv)
    flags.DEFINE_string("input", "-", "decode: file of source lines ('-': stdin)", flag_values=fv)
    flags.DEFINE_integer("beam_size", 0, "decode: beam size (0: config.decode.beam_size)", flag_values=fv)
    flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "eval/decode: which checkpoint", flag_values=fv)
    flags.DEFINE_string("coordinator", None, "multi-host: coordinator address host:port", flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "multi-host: number of processes", flag_values=fv)
    flags.DEFINE_integer("process_id", None, "multi-host: this process's index", flag_values=fv)
    config_path = next((a.split("=", 1)[1] if "=" in a else None for a in argv if a.startswith("--config=")), None)
    if config_path is None and "--config" in argv and argv.index("--config") + 1 < len(argv):
        config_path = argv[argv.index("--config") + 1]
    if config_path is not None and not os.path.isfile(config_path.split(":")[0]):
        raise SystemExit(f"error: --config={config_path!r}: no such file")
    saved_argv, sys.argv = sys.argv, ["transformer-jax", *argv]  # config_flags reads overrides from sys.argv
    try:
        rest = fv(["transformer-jax", *argv])
    except (AttributeError, KeyError) as err:  # ml_collections: unknown override key
        bad = next((a.split("=")[0] for a in argv if a.startswith("--config.")), "--config.?")
        hint = str(err).strip("'\"").replace("\\n", " ").replace("\n", " ")
        raise SystemExit(f"error: unknown config key in {bad} ({hint})") from None
    except flags.Error as err:
        raise SystemExit(f"error: {err}") from None
    finally:
        sys.argv = saved_argv
    if len(rest) > 1:
        raise SystemExit(f"error: unexpected arguments {rest[1:]}")
    return fv


def _maybe_distributed(fv) -> None:
    import jax

    if fv.coordinator or fv.num_processes:
        jax.distributed.initialize(coordinator_address=fv.coordinator, num_processes=fv.num_processes,
                                   process_id=fv.process_id)


def _config(fv):
    """--config if given, else the config saved in the workdir by `train`."""
    from transformer_jax.train import loop

    return fv.config if fv.config is not None else loop.load_config(fv.workdir)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, argv = argv[0], argv[1:]
    if command not in ("train", "eval", "decode"):
        raise SystemExit(f"error: unknown command {command!r}; valid: train, eval, decode\n{USAGE}")
    if any(a in ("-h", "--help", "-help") for a in argv):
        print(USAGE)
        return 0
    fv = _flags(argv)
    if not fv.workdir:
        raise SystemExit("error: --workdir is required")
    _maybe_distributed(fv)

    import jax

    from transformer_jax.train import loop

    if command == "train":
        if fv.config is None:
            raise SystemExit("error: train needs --config FILE")
        try:
            loop.train(fv.config, fv.workdir)
        except (ValueError, loop.NonFiniteError) as err:
            raise SystemExit(f"error: {err}") from None
        return 0

    config = _config(fv)
    try:
        s, state, step = loop.restore_for_eval(config, fv.workdir, which=fv.checkpoint)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    if command == "eval":
        result = {"step": step}
        iterator = loop.make_data_iterator(config, config.data.eval_split, s.tokenizer, repeat=False)
        result.update(loop.evaluate_loss(s, state.params, iterator, config.eval_batches))
        if loop.task_kind(config) == "translation":
            bleu = loop.evaluate_bleu(s, state.params, config.data.test_split)
            print(f"BLEU {bleu['bleu']:.2f} on {bleu['split']} | {bleu['signature']}")
            result.update(bleu)
        print({k: v for k, v in result.items() if k != "samples"})
        if jax.process_index() == 0:
            loop.write_json_atomic(os.path.join(fv.workdir, "eval.json"), result)
        return 0

    # decode
    if loop.task_kind(config) != "translation":
        raise SystemExit(f"error: decode needs a translation task; config.data.task={config.data.task!r}")
    stream = sys.stdin if fv.input == "-" else open(fv.input)
    lines = [line.rstrip("\n") for line in stream]
    dc = config.decode
    outputs = loop.translate(s, state.params, lines, beam_size=fv.beam_size or dc.beam_size,
                             max_len=min(dc.max_len, s.model.cfg.max_len), length_penalty=dc.length_penalty,
                             batch_size=dc.batch_size)
    for line in outputs:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
