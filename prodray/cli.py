"""`prodray ...` commands. No logic here: parse arguments, call the package, print results.

Expected failures (bad config, missing source, unreachable server) print one line and exit 2.
"""

import argparse
import json
import sys


def _print_json(value) -> None:
    print(json.dumps(value, indent=2))


def cmd_up(args) -> None:
    from prodray.local import stack as local
    ports = local.Ports.from_env(dashboard=args.dashboard_port, s3=args.s3_port, ray=args.ray_port)
    state = local.up(ports, bucket=args.bucket)
    env = local.stack_env(state)
    print("local stack is up:")
    print(f"  Ray head:   {local.HOST}:{ports.ray}  (dashboard + job API {env['RAY_ADDRESS']})")
    print(f"  S3 server:  {env['AWS_ENDPOINT_URL']}  bucket s3://{state['bucket']}  data {local.home() / 's3data'}")
    print("export the environment with:")
    print('  eval "$(prodray env)"')
    print(f"  (sets RAY_ADDRESS={env['RAY_ADDRESS']} AWS_ENDPOINT_URL={env['AWS_ENDPOINT_URL']} "
          "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, and RAY_AUTH_MODE/RAY_AUTH_TOKEN_PATH:"
          " the job API requires the token)")


def cmd_down(args) -> None:
    from prodray.local import stack as local
    local.down()


def cmd_status(args) -> None:
    from prodray.local import stack as local
    status = local.status()
    if args.json:
        _print_json(status)
        return
    if not status["running"]:
        print("local stack: not running (start it with `prodray up`)")
        return
    ray, s3 = status["ray"], status["s3"]
    print(f"Ray head: {'running' if ray['alive'] else 'DEAD'} pid {ray['pid']} at {ray['address']}, "
          f"dashboard {ray['dashboard']}")
    print(f"S3:       {'running' if s3['alive'] else 'DEAD'} pid {s3['pid']} at {s3['endpoint']}, "
          f"bucket {s3['bucket']}, data {s3['data']}")


def cmd_env(args) -> None:
    """Print `export` lines for the running local stack (meant for eval, not for logs)."""
    from prodray.local import stack as local
    state = local.read_state()
    if not state:
        raise local.StackError("local stack not running: start it with `prodray up`")
    for key, value in local.stack_env(state).items():
        print(f"export {key}={value}")


def cmd_catalog_import(args) -> None:
    from prodray.catalog import ingest as catalog
    result = catalog.import_catalog(args.src, args.dest, attributes_csv=args.attributes)
    print(f"imported {result['images']} images ({result['rejected']} rejected) to {args.dest}; "
          f"manifest {result['manifest']}")


def cmd_catalog_sample(args) -> None:
    from prodray.catalog import ingest as catalog
    catalog.sample_catalog(args.dest, fashion_count=args.fashion_mnist, jpeg_quality=args.jpeg_quality)


def _upscalers(model_ref: str, scale: int, device: str, self_ensemble: bool = False, precision: str = "auto",
               strength=None):
    from prodray.enhancer.evaluation import bicubic_upscale, unsharp_mask
    from prodray.enhancer.inference import Enhancer, default_model
    enhancer = Enhancer.load(model_ref or default_model(scale), device=device, self_ensemble=self_ensemble,
                             precision=precision, strength=strength)
    if enhancer.scale != scale:
        raise ValueError(f"model {enhancer.model_id} is x{enhancer.scale}, but --scale is {scale}")

    def model(lr, s, jpeg_quality=None):
        return enhancer.enhance(lr, jpeg_quality=jpeg_quality).rgb
    return enhancer, {"model": model, "bicubic": bicubic_upscale,
                      "bicubic+unsharp": lambda lr, s: unsharp_mask(bicubic_upscale(lr, s))}


STRENGTH_HELP = ("restoration models: 0 (the clean model) to 1 (full restoration), or auto (per image, from its "
                 "JPEG quality and noise); default: 1")


def _strength(value: str):
    from prodray.config import parse_strength
    try:
        return parse_strength(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(least: int):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if number < least:
            raise argparse.ArgumentTypeError(f"{number} is below {least}")
        return number
    return parse


_non_negative, _positive = _count(0), _count(1)


def cmd_eval_sr(args) -> None:
    from prodray.enhancer.evaluation import evaluate_sr
    enhancer, upscalers = _upscalers(args.model, args.scale, args.device, args.self_ensemble, args.precision)
    del upscalers["bicubic+unsharp"]
    result = evaluate_sr(args.data, args.scale, upscalers)
    result["model_id"] = enhancer.model_id
    if args.json:
        result.pop("per_image")
        _print_json(result)
        return
    for row in result["per_image"]:
        print(f"  {row['image']:<20} model {row['model']['psnr_y']:.2f} dB  bicubic {row['bicubic']['psnr_y']:.2f} dB")
    print(f"{enhancer.model_id} x{args.scale} on {result['images']} images: "
          f"model {result['model']['psnr_y']:.2f} dB / {result['model']['ssim_y']:.4f}, "
          f"bicubic {result['bicubic']['psnr_y']:.2f} dB / {result['bicubic']['ssim_y']:.4f}")


def cmd_eval_catalog(args) -> None:
    from prodray.enhancer.evaluation import (
        default_reference_downscale,
        evaluate_catalog,
        evaluate_suite,
        nlmeans_denoise,
    )
    enhancer, upscalers = _upscalers(args.model, args.scale, args.device, args.self_ensemble, args.precision,
                                     args.strength)
    if args.suite:
        upscalers["unsharp"] = upscalers.pop("bicubic+unsharp")
        if args.scale == 1:
            upscalers["nlmeans"] = lambda lr, s: nlmeans_denoise(lr)
        if args.compare:
            compared, compare_upscalers = _upscalers(args.compare, args.scale, args.device, args.self_ensemble,
                                                     args.precision, args.compare_strength)
            upscalers["compare"] = compare_upscalers["model"]
        downscale = args.reference_downscale or default_reference_downscale(args.scale)
        result = evaluate_suite(args.data, args.scale, upscalers, args.suite, seed=args.seed, limit=args.limit,
                                skip=args.skip, reference_downscale=downscale,
                                log=lambda msg: print(msg, file=sys.stderr, flush=True))
        if args.compare:
            result["compare_id"] = compared.model_id
        result["strength"] = enhancer.strength if enhancer.restores else None
    else:
        result = evaluate_catalog(args.data, args.scale, upscalers, seed=args.seed, limit=args.limit)
    result["model_id"] = enhancer.model_id
    _print_json(result) if args.json else print(json.dumps(result, indent=1))


def cmd_eval_repair(args) -> None:
    import torch

    from prodray.enhancer.evaluation import list_images
    from prodray.repair.evaluation import baselines, evaluate_repair
    from prodray.repair.inference import Repairer
    torch.set_num_threads(args.threads)
    repairer = Repairer.load(args.model, device=args.device, precision=args.precision)
    paths = list_images(args.data)[:args.limit]
    result = evaluate_repair(paths, {"model": repairer.repair, **baselines()}, seed=args.seed,
                             log=None if args.json else lambda msg: print(msg, file=sys.stderr, flush=True))
    result["model_id"] = repairer.model_id
    if args.json:
        _print_json(result)
        return
    for kind in result["masks"]:
        print(f"{kind:<8}" + "  ".join(f"{method} {result[method][kind]['psnr_masked']:.2f} dB"
                                       for method in ("model", "telea", "ns", "blur")))


def cmd_eval_recolour(args) -> None:
    from prodray.enhancer.evaluation import list_images
    from prodray.io.codec import decode_image
    from prodray.recolour.baseline import lab_shift
    from prodray.recolour.evaluation import colour_classifier, evaluate_recolour
    from prodray.recolour.inference import load_recolourer
    from prodray.recolour.segmentation import product_mask

    def images():
        for path in list_images(args.data)[:args.limit]:
            decoded = decode_image(path.read_bytes())
            yield path.name, decoded.rgb, decoded.alpha

    methods = {"model": load_recolourer(args.model).recolour, "baseline": lab_shift}
    classify = None if args.classifier == "none" else colour_classifier(args.classifier)
    colours = [c.strip() for c in args.colours.split(",")] if args.colours else None
    result = evaluate_recolour(images(), methods, product_mask, **({"colours": colours} if colours else {}),
                               log=None if args.json else lambda msg: print(msg, file=sys.stderr, flush=True),
                               classify=classify)
    if args.json:
        _print_json(result)
        return
    print(f"{result['images']} images x {len(result['colours'])} colours")
    for method in methods:
        scores = result[method]
        print(f"{method:<9} named colour accuracy {scores['named_colour_acc']:.3f}, dE00 {scores['de00']:.2f}, "
              f"classifier {scores.get('classifier_acc', float('nan')):.3f}, detail SSIM "
              f"{scores['detail_ssim']:.3f}, background kept {scores['background_kept']:.4f}")


def cmd_repair(args) -> None:
    from pathlib import Path

    from prodray.io.codec import decode_image, encode_image
    from prodray.repair.inference import Repairer
    from prodray.repair.masks import mask_from_png
    image = decode_image(Path(args.image).read_bytes())
    mask = mask_from_png(Path(args.mask).read_bytes(), image.rgb.shape[:2])
    repaired = Repairer.load(args.model, device=args.device, precision=args.precision).repair(image.rgb, mask)
    fmt = Path(args.out).suffix.lstrip(".").lower().replace("jpg", "jpeg") or "png"
    Path(args.out).write_bytes(encode_image(repaired, fmt=fmt))
    print(f"wrote {args.out} ({int(mask.sum())} pixels repaired)")


def cmd_eval_gan(args) -> None:
    from prodray.gan.classifier import shipped_classifier_for
    from prodray.gan.data import read_vocab
    from prodray.gan.evaluation import evaluate_gan, generator_sample_fn
    from prodray.gan.inference import ProductGenerator
    meta = read_vocab(args.data)
    vocab, resolution = meta["attributes"], int(meta["resolution"])
    generator = ProductGenerator.load(args.model, device=args.device, precision=args.precision)
    if int(generator.resolution) != resolution:
        raise ValueError(f"generator {generator.model_id} makes {generator.resolution} px images, "
                         f"{args.data} is {resolution} px")
    classifier = args.classifier or shipped_classifier_for(vocab, resolution)
    echo = (lambda message: print(message, file=sys.stderr)) if args.json else print
    result = evaluate_gan(generator_sample_fn(generator, vocab, args.truncation), args.data, classifier, n=args.n,
                          seed=args.seed, inception_weights=args.inception_weights, cas_epochs=args.cas_epochs,
                          threads=args.threads, echo=echo)
    result["model_id"], result["truncation"] = generator.model_id, args.truncation
    if args.json:
        _print_json(result)
        return
    print(f"{generator.model_id} on {args.data} (n={result['n']}, features {result['features']}"
          + (f", truncation {args.truncation:g}" if args.truncation else "") + "):")
    print(f"  FID {result['fid']:.3f} (floor {result['fid_floor']:.3f})  KID {result['kid']:.5f} "
          f"(floor {result['kid_floor']:.5f})")
    print(f"  CAS {result['cas']:.4f} vs real_acc {result['real_acc']:.4f} ({result['primary']})")
    for name, share in result["attr_acc"].items():
        print(f"  attr_acc {name}: {share:.4f} (classifier on real test: {result['classifier_acc'][name]:.4f}; "
              f"CAS {result['cas_by_attr'][name]:.4f}, real {result['real_acc_by_attr'][name]:.4f})")


def cmd_eval_preference(args) -> None:
    from prodray.catalog.preference import evaluate_preference
    result = evaluate_preference(args.uri)
    if args.json:
        _print_json(result)
        return
    print(f"{result['votes']} votes under {args.uri}" + (f" ({result['skipped']} lines skipped)"
                                                           if result["skipped"] else ""))
    for name, pair in result["pairs"].items():
        low, high = pair["ci95"]
        print(f"  {name}: {pair['votes']} votes, {pair['a']} {pair['wins_a']} / {pair['b']} {pair['wins_b']} / "
              f"same {pair['same']}; {pair['a']} wins {pair['win_rate_a']:.3f} (95% CI {low:.3f}-{high:.3f})")


def cmd_enhance(args) -> None:
    from prodray.cluster.jobs import enhance_job
    enhance_job(args)


def cmd_report(args) -> None:
    from prodray.catalog.report import write_report
    print(f"report written to {write_report(args.output_uri, sample=args.sample, local_path=args.local)}")


def cmd_gan_train_classifier(args) -> None:
    from prodray.gan.classifier import train_and_export
    command = (f"prodray gan train-classifier --data {args.data} --out {args.out} --epochs {args.epochs:g} "
               f"--seed {args.seed} --threads {args.threads}" + (f" --limit {args.limit}" if args.limit else "")
               + (f" --widths {args.widths}" if args.widths else ""))
    widths = [int(w) for w in args.widths.split(",")] if args.widths else None
    result = train_and_export(args.data, args.out, epochs=args.epochs, limit=args.limit, seed=args.seed,
                              threads=args.threads, widths=widths, command=command)
    print(f"{result['model_id']}: test accuracy "
          + ", ".join(f"{k} {v:.4f}" for k, v in result["test_accuracy"].items()) + f" -> {args.out}")


def cmd_gan_prepare(args) -> None:
    from prodray.gan.data import prepare_fashion_mnist, prepare_fashion_products
    kwargs = {"source": args.source} if args.source else {}
    if args.dataset == "fashion-mnist":
        result = prepare_fashion_mnist(args.out, limit=args.limit, **kwargs)
    else:
        result = prepare_fashion_products(args.out, min_count=args.min_count, limit=args.limit, **kwargs)
    print(f"prepared {result['images']} images ({result['splits']}) at {args.out}: "
          + ", ".join(f"{k} ({len(v)} values)" for k, v in result["attributes"].items()))


def cmd_gan_generate(args) -> None:
    import io
    import zipfile

    from prodray.gan.inference import ProductGenerator
    from prodray.io import storage
    from prodray.io.codec import encode_image
    generator = ProductGenerator.load(args.model, precision=args.precision)
    attributes = dict(item.split("=", 1) for item in args.attribute)
    images = generator.generate(attributes, n=args.n, seed=args.seed, truncation=args.truncation)
    if args.out.endswith(".zip"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            for index, image in enumerate(images):
                archive.writestr(f"{index:04d}.png", encode_image(image, fmt="png"))
        storage.put_bytes(args.out, buffer.getvalue())
    else:
        from prodray.io.images import image_grid
        storage.put_bytes(args.out, encode_image(image_grid([images]), fmt="png"))
    print(f"{generator.model_id}: {len(images)} image(s) of {attributes} (seed {args.seed}) -> {args.out}")


def cmd_gan_export(args) -> None:
    from prodray.local.runner import export_checkpoint
    model_id = export_checkpoint(args.run, args.checkpoint, args.out)
    print(f"exported {model_id} from {args.checkpoint} to {args.out}")


PRECISION_HELP = ("inference precision: auto = bf16 on CPUs with AMX/AVX512-BF16 and on GPUs with bf16, "
                  "fp16 on other GPUs, fp32 otherwise")
TRUNCATION_HELP = ("draw the noise from a normal cut to [-T, T], 0 < T <= 4: smaller T, more typical images "
                   "(attributes recognised more often), less variety; default: no cut")


def build_parser() -> argparse.ArgumentParser:
    from prodray.config import PRECISIONS

    parser = argparse.ArgumentParser(prog="prodray", description="Product images at catalog scale on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the local Ray head and the embedded S3 server")
    up.add_argument("--dashboard-port", type=int)
    up.add_argument("--s3-port", type=int)
    up.add_argument("--ray-port", type=int)
    up.add_argument("--bucket", default="prodray")
    up.set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop what `prodray up` started (data is kept)").set_defaults(func=cmd_down)
    status = sub.add_parser("status", help="what runs where")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    sub.add_parser("env", help="print export lines for the local stack").set_defaults(func=cmd_env)

    catalog = sub.add_parser("catalog", help="catalogs in object storage").add_subparsers(
        dest="catalog_command", required=True)
    imp = catalog.add_parser("import", help="copy images to DEST_URI and write _manifest.parquet")
    imp.add_argument("src")
    imp.add_argument("dest")
    imp.add_argument("--attributes", help="CSV with a key/filename column and attribute columns")
    imp.set_defaults(func=cmd_catalog_import)
    sample = catalog.add_parser("sample", help="build the offline sample catalog at DEST_URI")
    sample.add_argument("dest")
    sample.add_argument("--fashion-mnist", type=int, default=100, help="how many Fashion-MNIST images")
    sample.add_argument("--jpeg-quality", type=int, choices=range(1, 101), metavar="1-100",
                        help="store every image as a JPEG at this quality (the damage suppliers' files carry)")
    sample.set_defaults(func=cmd_catalog_sample)

    evaluate = sub.add_parser("eval", help="quality evaluation").add_subparsers(dest="eval_command", required=True)
    sr = evaluate.add_parser("sr", help="standard SR protocol (PSNR/SSIM on Y) against bicubic")
    catalog_eval = evaluate.add_parser("catalog", help="degraded product photos: PSNR/SSIM/CIEDE2000")
    for command in (sr, catalog_eval):
        command.add_argument("--model", help="export folder, s3:// URI or shipped name (default: shipped)")
        command.add_argument("--data", required=True)
        command.add_argument("--scale", type=int, default=2, choices=[1, 2, 4] if command is catalog_eval else [2, 4],
                             help="1: same-size restoration (restore-x1)" if command is catalog_eval else None)
        command.add_argument("--device", default="cpu")
        command.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
        command.add_argument("--json", action="store_true")
        command.add_argument("--self-ensemble", action="store_true",
                             help="average the model over the 8 flips/turns of each input (8x the compute)")
    catalog_eval.add_argument("--seed", type=int, default=0)
    catalog_eval.add_argument("--limit", type=int, default=50)
    catalog_eval.add_argument("--skip", type=_non_negative, default=0,
                              help="with --suite: leave out the first N images (the rest keep their seeds)")
    catalog_eval.add_argument("--reference-downscale", type=_positive, metavar="N",
                              help="with --suite: score against the original downscaled by N, so that its own "
                                   "JPEG blocking is not taken as truth (default: 2 at --scale 1, else 1)")
    catalog_eval.add_argument("--suite", choices=["standard"],
                              help="score every damage of the suite (clean, jpeg30/50/75, noise5/10, blur1.0/1.5, "
                                   "chain) instead of the single noise + JPEG q75 damage")
    catalog_eval.add_argument("--compare", metavar="NAME", help="with --suite: a second model scored as `compare`")
    catalog_eval.add_argument("--strength", type=_strength, help=STRENGTH_HELP)
    catalog_eval.add_argument("--compare-strength", type=_strength, help="--strength for the --compare model")
    sr.set_defaults(func=cmd_eval_sr)
    catalog_eval.set_defaults(func=cmd_eval_catalog)
    gan_eval = evaluate.add_parser("gan", help="GAN: FID/KID against a real-data floor, CAS, attribute accuracy")
    gan_eval.add_argument("--model", required=True, help="generator export folder, s3:// URI or shipped name")
    gan_eval.add_argument("--data", required=True, help="prepared dataset (folder or s3:// prefix)")
    gan_eval.add_argument("--classifier", help="attribute classifier export (default: the shipped one for the data)")
    gan_eval.add_argument("--n", type=int, default=2000, help="real test images, and generated images per set")
    gan_eval.add_argument("--seed", type=int, default=0)
    gan_eval.add_argument("--cas-epochs", type=float, default=10.0)
    gan_eval.add_argument("--inception-weights", help="torchvision inception_v3 state dict (.pt or .safetensors) "
                          "for FID/KID features instead of the classifier's; nothing is downloaded")
    gan_eval.add_argument("--threads", type=int, default=1, help="torch threads")
    gan_eval.add_argument("--device", default="cpu", help="generator device")
    gan_eval.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    gan_eval.add_argument("--truncation", type=float, help=TRUNCATION_HELP)
    gan_eval.add_argument("--json", action="store_true")
    gan_eval.set_defaults(func=cmd_eval_gan)
    repair_eval = evaluate.add_parser("repair", help="inpainting: masked PSNR/L1 and SSIM per mask kind (narrow, "
                                      "thick, large, text) beside OpenCV Telea / Navier-Stokes and a blur fill")
    repair_eval.add_argument("--data", required=True, help="folder of undamaged photos (searched recursively)")
    repair_eval.add_argument("--model", default="repair", help="export folder, s3:// URI or shipped name")
    repair_eval.add_argument("--seed", type=int, default=0, help="the mask suite's seed")
    repair_eval.add_argument("--limit", type=int, default=100, help="score the first N images (sorted by path)")
    repair_eval.add_argument("--threads", type=int, default=2, help="torch threads")
    repair_eval.add_argument("--device", default="cpu")
    repair_eval.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    repair_eval.add_argument("--json", action="store_true")
    repair_eval.set_defaults(func=cmd_eval_repair)
    recolour_eval = evaluate.add_parser("recolour", help="recolouring: colour accuracy (named, dE00, the products "
                                        "classifier), detail SSIM and background kept per target colour, by source "
                                        "group, for the model beside the classical Lab-shift baseline")
    recolour_eval.add_argument("--data", required=True, help="folder of product photos (searched recursively)")
    recolour_eval.add_argument("--colours", help="comma-separated targets (vocabulary names or #rrggbb; "
                               "default: the suite's ten)")
    recolour_eval.add_argument("--limit", type=int, default=200, help="score the first N images (sorted by path)")
    recolour_eval.add_argument("--model", default="recolour", help="recolouring model: shipped name, export "
                               "folder, s3:// URI or 'baseline' (default: the shipped recolour)")
    recolour_eval.add_argument("--classifier", default="classifier-fashion-products",
                               help="attribute classifier whose baseColour head judges the results ('none': skip)")
    recolour_eval.add_argument("--json", action="store_true")
    recolour_eval.set_defaults(func=cmd_eval_recolour)
    preference = evaluate.add_parser("preference", help="blind A/B votes (GET /ab): win rates with 95%% intervals "
                                     "per pair of arms")
    preference.add_argument("uri", help="the serve app's votes prefix (s3:// or local folder) or a part of it")
    preference.add_argument("--json", action="store_true")
    preference.set_defaults(func=cmd_eval_preference)

    gan = sub.add_parser("gan", help="conditional product GAN").add_subparsers(dest="gan_command", required=True)
    train_classifier = gan.add_parser("train-classifier",
                                      help="train the attribute classifier used by `eval gan` (features, CAS)")
    train_classifier.add_argument("--data", required=True, help="prepared dataset folder or s3:// prefix")
    train_classifier.add_argument("--out", required=True, help="export folder or s3:// prefix")
    train_classifier.add_argument("--epochs", type=float, default=3.0)
    train_classifier.add_argument("--limit", type=int, help="train on a seeded random subset of this many images")
    train_classifier.add_argument("--seed", type=int, default=0)
    train_classifier.add_argument("--threads", type=int, default=1, help="torch threads")
    train_classifier.add_argument("--widths", help="channels per stage, e.g. 16,32,64 (default: 32,64,128[,128])")
    train_classifier.set_defaults(func=cmd_gan_train_classifier)
    prepare = gan.add_parser("prepare", help="make a prepared GAN dataset (PNGs + manifest.parquet + vocab.json)")
    prepare.add_argument("dataset", choices=["fashion-mnist", "fashion-products"])
    prepare.add_argument("--out", required=True, help="folder or s3:// prefix")
    prepare.add_argument("--source", help="source folder (default: the Debian package / ../shared/data)")
    prepare.add_argument("--min-count", type=int, default=500, help="rarer attribute values are grouped as 'other'")
    prepare.add_argument("--limit", type=int, help="at most this many images per split (fashion-mnist) or in all")
    prepare.set_defaults(func=cmd_gan_prepare)
    export = gan.add_parser("export", help="export the EMA generator of a training checkpoint")
    export.add_argument("--run", required=True, help="run folder (holds config.json)")
    export.add_argument("--checkpoint", required=True, help="checkpoint folder inside the run")
    export.add_argument("--out", required=True, help="export folder or s3:// prefix")
    export.set_defaults(func=cmd_gan_export)
    generate = gan.add_parser("generate", help="generate product images from attributes")
    generate.add_argument("--model", default="gan-fashion-mnist", help="generator export or shipped name")
    generate.add_argument("--attribute", "-a", action="append", default=[], metavar="NAME=VALUE")
    generate.add_argument("--n", type=int, default=8)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--truncation", type=float, help=TRUNCATION_HELP)
    generate.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    generate.add_argument("--out", required=True, help="PNG (a row of images) or .zip of PNGs; local or s3://")
    generate.set_defaults(func=cmd_gan_generate)

    from prodray.cli_flags import add_config_flags
    from prodray.config import BulkConfig
    repair = sub.add_parser("repair", help="repair one image: fill the regions a mask PNG marks (white = repair)")
    repair.add_argument("image")
    repair.add_argument("mask", help="PNG the size of the image; white (or opaque) pixels are repaired")
    repair.add_argument("--out", required=True, help="output file (.png, .jpg or .webp)")
    repair.add_argument("--model", default="repair", help="export folder, s3:// URI or shipped name")
    repair.add_argument("--device", default="cpu")
    repair.add_argument("--precision", default="auto", choices=PRECISIONS, help=PRECISION_HELP)
    repair.set_defaults(func=cmd_repair)
    enhance = sub.add_parser("enhance", help="bulk-enhance a catalog with Ray Data (jobs/enhance_catalog.py)")
    add_config_flags(enhance, BulkConfig)
    enhance.set_defaults(func=cmd_enhance)

    report = sub.add_parser("report", help="before/after HTML gallery of a bulk run")
    report.add_argument("output_uri")
    report.add_argument("--sample", type=int, default=24)
    report.add_argument("--local", help="also write the page to this local file")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv=None) -> None:
    from prodray.cluster.jobs import run_main
    from prodray.local.stack import apply_local_env

    args = build_parser().parse_args(argv)
    apply_local_env()
    run_main(lambda: args.func(args))


if __name__ == "__main__":
    main(sys.argv[1:])
