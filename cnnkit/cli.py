"""The ``cnnkit`` command. Every sub-command is a thin call into the library."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .errors import CnnkitError
from .models import MODELS, PRETRAINED_ARCHS

# The architectures that pretrained weight files map onto (see cnnkit.io.pretrained).


def parse_volume(text: str) -> tuple[int, int, int]:
    """``"224x224x3"`` -> ``(224, 224, 3)``."""
    try:
        parts = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--input must look like 224x224x3 (H x W x C); received {text!r}")
    return parts  # type: ignore[return-value]


def _summary(args: argparse.Namespace) -> int:
    options = {}
    if args.input is not None:
        options["input_shape"] = args.input
    if args.num_classes is not None:
        options["num_classes"] = args.num_classes
    if args.batch_norm:
        if not args.model.startswith("vgg"):
            raise CnnkitError(f"--batch-norm applies to the VGG models only; received model {args.model!r}")
        options["batch_norm"] = True
    if args.layout is not None:
        if not args.model.startswith(("resnet", "mobilenet")):
            raise CnnkitError(f"--layout chooses a ResNet's or MobileNetV2's layout; received model {args.model!r}")
        options["layout"] = args.layout
    # a description only: counting VGG19 must not draw and hold its 144 M weights
    model = MODELS[args.model](**options, allocate=False)
    if args.json:
        print(model.summary(batch_size=args.batch_size, format="json"))
    elif args.markdown:
        print(model.summary(batch_size=args.batch_size, format="markdown"))
    else:
        model.summary(batch_size=args.batch_size)
    return 0


def _launch(args: argparse.Namespace) -> int:
    """Run this very command in ``--processes`` processes started by ``mpiexec`` on this machine;
    each finds itself launched (:func:`_join`)."""
    from .launch import launch
    return launch(args.processes, args.argv)


def _join(args: argparse.Namespace):
    """``cnnkit.distributed.MPI()`` in a process that ``mpiexec`` started among several, else None
    (read from the launcher's environment: mpi4py is not imported by a lone process)."""
    from .launch import launched_processes
    launched = launched_processes()
    if launched > 1 and args.processes not in (1, launched):
        raise CnnkitError(f"--processes {args.processes}, but mpiexec started {launched} processes; give one "
                          f"or the other")
    if launched == 1:
        return None
    from .distributed import MPI
    return MPI()


def _must_launch(args: argparse.Namespace) -> bool:
    from .launch import launched_processes
    return args.processes > 1 and launched_processes() == 1


def _train(args: argparse.Namespace) -> int:
    from .run import train_run
    from .train import say
    if _must_launch(args):
        return _launch(args)
    report = train_run(data=args.data, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                       lr=args.lr, optimizer=args.optimizer, out=args.out, seed=args.seed,
                       image_size=args.image_size, resume=args.resume, verbose=0 if args.quiet else 1,
                       distributed=_join(args))
    if report is None:   # a process other than rank 0: rank 0 reports
        return 0
    written = "model.safetensors, checkpoint.safetensors, metrics.csv, metrics.jsonl, report.json"
    if (Path(args.out) / "report.html").is_file():
        written += ", report.html"
    say(f"wrote {args.out}/: {written}")
    say(f"test loss: {report['test']['loss']:.4f}")
    say(f"test accuracy: {report['test']['accuracy']:.3f}")
    return 0


def _check_out_file(path: str, option: str = "--out") -> None:
    """Refuse an output file that cannot be written before any work is done, naming the user's path."""
    from .io import check_writable
    try:
        check_writable(path)
    except OSError as error:
        folder = Path(path).parent
        if isinstance(error, IsADirectoryError):
            hint = "it is a folder; name a file in it"
        elif not folder.is_dir():
            hint = f"its folder {str(folder)!r} does not exist; create it or choose another path"
        else:
            hint = "choose a path you can write to"
        raise CnnkitError(f"{option} {path!r} cannot be written ({error.strerror or error}): {hint}") from None


def _load_for_inference(args: argparse.Namespace):
    """A model from --arch and --weights, or a cnnkit model file alone."""
    from .classify import load_model
    return load_model(args.weights, args.arch, args.batch_norm, args.width)


def _classify(args: argparse.Namespace) -> int:
    import json

    from .classify import classify
    results = classify(_load_for_inference(args), args.images, top=args.top, mode=args.preprocessing)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        print(result["image"])
        for p in result["predictions"]:
            print(f"  {p['rank']}. {p['label']:<30} {p['probability']:.4f}  (class {p['index']})")
    return 0


def _features(args: argparse.Namespace) -> int:
    import numpy as np

    from .classify import extract_features, feature_layer
    from .io import atomic_path
    _check_out_file(args.out)
    model = _load_for_inference(args)
    layer = feature_layer(model, args.layer)
    features = extract_features(model, args.images, layer, mode=args.preprocessing)
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, features)
    print(f"wrote {args.out}: {features.shape[0]} x {' x '.join(map(str, features.shape[1:]))} "
          f"features from {layer}")
    return 0


def _advise(args: argparse.Namespace) -> int:
    from .transfer import advise
    from .classify import load_images, load_model
    source = load_model(args.weights, args.arch, args.batch_norm, args.width)
    train, _ = load_images(args.data, source, args.seed)
    print(advise(source, train, large_per_class=args.large_per_class, similar_above=args.similar_above,
                 cache_dir=None if args.cache == "none" else args.cache, seed=args.seed).report())
    return 0


def _transfer(args: argparse.Namespace) -> int:
    from .transfer.run import transfer_run
    if args.processes > 1 and args.mode not in ("finetune", "scratch"):
        raise CnnkitError(f"--processes {args.processes}: --mode {args.mode} does not train data-parallel; use "
                          f"--mode finetune or scratch with several processes, or leave --processes out")
    if _must_launch(args):
        return _launch(args)
    report = transfer_run(args.data, args.weights, arch=args.arch, mode=args.mode, layer=args.layer,
                          epochs=args.epochs, lr=args.lr, out=args.out, seed=args.seed, batch_norm=args.batch_norm,
                          width=args.width,
                          cache_dir=None if args.cache == "none" else args.cache, verbose=0 if args.quiet else 1,
                          distributed=_join(args))
    if report is None:   # a process other than rank 0: rank 0 reports
        return 0
    if report["advice"]:
        print(report["advice"])
    print(f"wrote {args.out}/model.safetensors ({report['mode']}"
          f"{', layer ' + report['layer'] if report['layer'] else ''}), report.json"
          f"{', report.html' if (Path(args.out) / 'report.html').is_file() else ''}")
    print(f"test accuracy: {report['test']['accuracy']:.3f}")
    return 0


def _add_transfer_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--data", required=True, help="'digits' or a folder of class sub-folders")
    command.add_argument("--arch", choices=PRETRAINED_ARCHS, default=None,
                         help="architecture of the weights (omit for a cnnkit model file)")
    command.add_argument("--weights", required=True, help="pretrained weights or a cnnkit model file")
    command.add_argument("--batch-norm", action="store_true", help="the weights are of a VGG with batch norm")
    _add_width_option(command)
    command.add_argument("--cache", default="auto",
                         help="feature cache folder; 'auto' is ~/.cache/cnnkit/features, 'none' keeps no cache")
    command.add_argument("--seed", type=int, default=0)


def _add_transfer_commands(commands) -> None:
    advise_cmd = commands.add_parser("advise", help="measure a data set against a network; recommend a scenario")
    _add_transfer_options(advise_cmd)
    advise_cmd.add_argument("--large-per-class", type=int, default=1000, help="median images per class that "
                                                                              "count as large")
    advise_cmd.add_argument("--similar-above", type=float, default=0.9, help="similarity that counts as similar")
    advise_cmd.set_defaults(run=_advise)
    transfer = commands.add_parser("transfer", help="train a transfer scenario and save the model")
    _add_transfer_options(transfer)
    transfer.add_argument("--mode", choices=("features", "finetune", "scratch", "auto"), default="auto")
    transfer.add_argument("--layer", default=None, help="cut layer (features: read here; finetune: frozen up to)")
    transfer.add_argument("--epochs", type=int, default=10)
    transfer.add_argument("--lr", type=float, default=0.01)
    transfer.add_argument("--out", default="runs/transfer", help="output folder")
    transfer.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    _add_processes_option(transfer)
    transfer.set_defaults(run=_transfer)


def _add_processes_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--processes", type=_positive_int, default=1,
                         help="train data-parallel in N processes started by mpiexec on this machine (needs "
                              "cnnkit[mpi]); or start cnnkit with mpiexec -n N yourself")


def _experiment(args: argparse.Namespace) -> int:
    seeds = tuple(range(args.seeds))
    if args.name == "transfer":
        from .experiments import compare_transfer, transfer_table
        print(f"Pretrained on digits 0-4 (vgg_small, batch norm; {args.seeds} pretraining seeds); learning 5-9 "
              f"from k images per class\n({args.draws} draws of the k images per network); test accuracy on "
              f"the 5-9 test split, mean ± standard deviation over the {args.seeds * args.draws} runs:")
        print(transfer_table(compare_transfer(draws=tuple(range(args.draws)), pretrain_seeds=seeds)))
        return 0
    from .experiments import activation_table, compare_activations
    print(f"Training the same CNN on the digits with each activation (plain SGD with momentum), once for each "
          f"of {args.seeds} seeds:")
    print(activation_table(compare_activations(epochs=args.epochs, seeds=seeds)))
    return 0


def _viz(args: argparse.Namespace) -> int:
    from . import viz
    from .viz.inputs import load_input, load_model, load_test_data
    _check_out_file(args.out)
    if args.picture == "functions":
        fig = viz.activation_functions()
    elif args.picture == "curves":
        fig = viz.curves(args.source)
    else:
        model = load_model(args.model)
        if args.picture == "filters":
            fig = viz.filters(model, args.layer, mode=args.mode, max_filters=args.max_filters)
        elif args.picture == "activations":
            fig = viz.activations(model, load_input(model, args.image), args.layer, n=args.n,
                                  most_active=args.most_active)
        elif args.picture == "confusion":
            fig = viz.confusion(model, load_test_data(args.data, model, seed=args.seed), normalize=args.normalize)
        else:
            image = load_input(model, args.image) if args.image else None
            fig = viz.receptive_field(model, args.layer, image)
    print(f"wrote {viz.save(fig, args.out)}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from .viz import write_report
    from .viz.inputs import load_model, load_test_data
    if args.out is not None:
        _check_out_file(args.out)
    data = load_test_data(args.data, load_model(args.run_dir), seed=args.seed) if args.data else None
    print(f"wrote {write_report(args.run_dir, data=data, out=args.out)}")
    return 0


def _add_viz_commands(commands) -> None:
    """``cnnkit viz PICTURE ... --out FILE`` and ``cnnkit report RUN_DIR`` (need ``cnnkit[viz]``)."""
    viz = commands.add_parser("viz", help="draw a picture of a model or a run as PNG or SVG (needs cnnkit[viz])")
    pictures = viz.add_subparsers(dest="picture", required=True, metavar="PICTURE")
    model_help = "a cnnkit model file, or a run folder holding model.safetensors"
    image_help = "an image file, or digits:N for the N-th bundled test digit"
    kinds = {
        "filters": pictures.add_parser("filters", help="the filters of a convolution as a grid"),
        "activations": pictures.add_parser("activations", help="the activation maps of a layer for one image"),
        "curves": pictures.add_parser("curves", help="loss and accuracy per epoch"),
        "confusion": pictures.add_parser("confusion", help="the confusion matrix on a test set"),
        "functions": pictures.add_parser("functions", help="sigmoid, tanh, ReLU, leaky ReLU and derivatives"),
        "receptive-field": pictures.add_parser("receptive-field", help="the input region one unit of a layer sees"),
    }
    for name in ("filters", "activations", "confusion", "receptive-field"):
        kinds[name].add_argument("--model", required=True, help=model_help)
    kinds["filters"].add_argument("--layer", default=None, help="a convolution's name (default: the first)")
    kinds["filters"].add_argument("--mode", choices=("auto", "rgb", "mean", "channels"), default="auto",
                                  help="rgb: colour tiles; mean: mean over input channels; channels: one "
                                       "tile per input channel (auto: rgb for 3 channels, else mean)")
    kinds["filters"].add_argument("--max-filters", type=int, default=64)
    kinds["activations"].add_argument("--image", required=True, help=image_help)
    kinds["activations"].add_argument("--layer", default=None, help="layer name (default: the first convolution)")
    kinds["activations"].add_argument("--n", type=int, default=16, help="how many maps (default 16)")
    kinds["activations"].add_argument("--most-active", action="store_true",
                                      help="the n maps with the largest mean instead of the first n")
    kinds["curves"].add_argument("source", help="a run folder, metrics.csv, metrics.jsonl or report.json")
    kinds["confusion"].add_argument("--data", default="digits", help="'digits' or a folder of class sub-folders")
    kinds["confusion"].add_argument("--seed", type=int, default=0, help="the split seed of a folder without test/")
    kinds["confusion"].add_argument("--normalize", action="store_true", help="fractions of each true class")
    kinds["receptive-field"].add_argument("--layer", required=True, help="layer name, e.g. conv2_2")
    kinds["receptive-field"].add_argument("--image", default=None, help=image_help + " (default: a blank grid)")
    for command in kinds.values():
        command.add_argument("--out", required=True, help="output file, .png or .svg")
    viz.set_defaults(run=_viz)

    report = commands.add_parser("report", help="write RUN_DIR/report.html: one self-contained page of a run "
                                                "(needs cnnkit[viz])")
    report.add_argument("run_dir", help="a folder written by `cnnkit train` or `cnnkit transfer`")
    report.add_argument("--out", default=None, help="output file (default RUN_DIR/report.html)")
    report.add_argument("--data", default=None, help="data for the confusion matrix (default: the run's own)")
    report.add_argument("--seed", type=int, default=0, help="the split seed of a folder without test/")
    report.set_defaults(run=_report)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number such as 0.25; received {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1 such as 5; received {text!r}")
    return value


def _add_width_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--width", type=_positive_float, default=1.0,
                         help="channel width multiplier of the weights' VGG or ResNet (width=), or MobileNetV2 "
                              "(width_mult=) (1 for the released weights; e.g. 0.25 for a narrow network trained "
                              "with cnnkit's width=0.25)")


def _add_weights_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--arch", choices=PRETRAINED_ARCHS, default=None,
                         help="architecture of the weights (omit for a cnnkit model file); a Keras file given "
                              "to resnet50/101/152 or mobilenet_v2 builds Keras's layout (conv4_block6_out, "
                              "block_13_expand_relu ...)")
    command.add_argument("--weights", required=True, help="torchvision/timm .pth, Keras .h5, .weights.h5 "
                                                          "or .keras, safetensors or cnnkit model file")
    command.add_argument("--batch-norm", action="store_true", help="the weights are of a VGG with batch norm")
    _add_width_option(command)
    command.add_argument("--preprocessing", choices=("caffe", "torch", "tf", "none", "unit", "digits"), default=None,
                         help="override the preprocessing saved with the model or implied by the weights' "
                              "source (torchvision and timm: torch, Keras: caffe, Keras's MobileNetV2: tf, i.e. "
                              "pixels scaled to [-1, 1]; cnnkit train on a folder: "
                              "unit, i.e. pixels scaled to [0, 1]; on the digits: digits)")
    command.add_argument("images", nargs="+", help="image files")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnnkit", description="Convolutional neural networks on NumPy.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    summary = commands.add_parser("summary", help="per-layer shapes, parameters, memory, mult-adds, receptive field")
    summary.add_argument("model", choices=sorted(MODELS), help="architecture name")
    summary.add_argument("--batch-size", type=int, default=1, help="batch size for the memory totals")
    summary.add_argument("--input", type=parse_volume, default=None, help="input volume HxWxC, e.g. 224x224x3")
    summary.add_argument("--num-classes", type=int, default=None, help="output classes")
    summary.add_argument("--batch-norm", action="store_true", help="the VGG variant with batch normalisation")
    summary.add_argument("--layout", choices=("torchvision", "keras"), default=None,
                         help="a ResNet's or MobileNetV2's layout: torchvision's (the default; ResNet v1.5) or "
                              "keras.applications' (Keras's layer names and padding; ResNet v1 with convolution "
                              "biases: resnet50, resnet101, resnet152; mobilenet_v2)")
    output = summary.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print JSON")
    output.add_argument("--markdown", action="store_true", help="print a Markdown table")
    summary.set_defaults(run=_summary)

    train = commands.add_parser("train", help="train a model, writing checkpoint, metrics and report")
    train.add_argument("--data", default="digits", help="'digits' (bundled) or a folder of class sub-folders")
    train.add_argument("--model", default="vgg_small", help="a model name or an architecture .json")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=_positive_float, default=None,
                       help="learning rate (default 0.02; on --resume: the checkpoint's, or this one when given)")
    train.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    train.add_argument("--image-size", type=int, default=64, help="images of a folder are resized to this")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default="runs/train", help="output folder")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.safetensors")
    train.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    _add_processes_option(train)
    train.set_defaults(run=_train)

    classify = commands.add_parser("classify", help="top classes of photos with pretrained weights")
    _add_weights_options(classify)
    classify.add_argument("--top", type=int, default=5, help="how many classes to show per image (default 5)")
    classify.add_argument("--json", action="store_true",
                          help="print JSON: a list of {image, predictions: [{rank, index, label, probability}]}")
    classify.set_defaults(run=_classify)

    features = commands.add_parser("features", help="extract features of photos at a named layer")
    _add_weights_options(features)
    features.add_argument("--layer", default=None,
                          help="node name, e.g. fc7, pool5, conv4_3 (VGG), layer3, layer4.1, avgpool (ResNet), "
                               "conv4_block6_out, avg_pool (a Keras ResNet) or features.13, features (MobileNetV2); "
                               "default: fc7 of a VGG, the input of the classifier of other networks (avgpool of a "
                               "ResNet or MobileNetV2)")
    features.add_argument("--out", required=True, help="output .npy file: one row per image, in the given order")
    features.set_defaults(run=_features)

    experiment = commands.add_parser("experiment", help="experiments on the bundled data")
    experiment.add_argument("name", choices=("activations", "transfer"),
                            help="activations: ReLU vs sigmoid vs tanh; transfer: scratch vs features vs finetune")
    experiment.add_argument("--epochs", type=int, default=15, help="activations: epochs per run")
    experiment.add_argument("--seeds", type=_positive_int, default=5,
                            help="seeds 0..N-1: initialisations (activations) or pretrained networks (transfer)")
    experiment.add_argument("--draws", type=_positive_int, default=6,
                            help="transfer: draws of the k images for each pretrained network")
    experiment.set_defaults(run=_experiment)
    _add_viz_commands(commands)
    _add_transfer_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cnnkit`` console script."""
    args = build_parser().parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])   # what --processes runs again, in each process
    with warnings.catch_warnings():
        warnings.showwarning = _warning_printer(args.command)
        return _run(args)


def _warning_printer(command: str):
    """Warnings as one line each, like the errors: ``cnnkit <command>: warning: <message>``."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"cnnkit {command}: warning: {message}", file=file or sys.stderr)
    return show


def _run(args: argparse.Namespace) -> int:
    try:
        return args.run(args)
    except CnnkitError as error:
        print(f"cnnkit {args.command}: {error}", file=sys.stderr)
    except BrokenPipeError:   # the reader left (`cnnkit classify ... | head -1`): stop quietly, as cat does
        from .train import silence_stdout
        silence_stdout()
        return 1
    except OSError as error:   # a file the user named, unreadable or unwritable: a message, not a traceback
        where = f" {error.filename}" if error.filename else ""
        print(f"cnnkit {args.command}: cannot use{where}: {error.strerror or error}; check the path and "
              f"its permissions", file=sys.stderr)
    except MemoryError:
        print(f"cnnkit {args.command}: out of memory; use a smaller model, batch or image size",
              file=sys.stderr)
    _end_job(2)
    return 2


def _end_job(status: int) -> None:
    """Under mpiexec, one process's error ends them all: the others would wait for it for ever."""
    if "cnnkit.distributed" in sys.modules:
        sys.modules["cnnkit.distributed"].end_job(status)


if __name__ == "__main__":
    sys.exit(main())
