"""Data: WebDataset shards written and read, in the order data flows. A building block: no
engine, task, tracking, accelerate, deepspeed or wandb imports.

Writing (data sets -> shards + manifest):

    converters.py       source data sets `cvdist shards` converts (Fashion-MNIST IDX, image folders, CIFAR)
    builtin.py          the built-in sets in memory (Fashion-MNIST from its IDX files, the synthetic set)
    builtin_shards.py   the built-in sets written once as shards into a keyed cache (the one data path)
    shard_writer.py     samples -> numbered tars + manifest, atomically
    longtail.py         a long-tailed subset of a shard directory (`cvdist shards longtail`)
    manifest.py         manifest.json: samples and class counts per shard and split (written and read)

Reading (shards -> batches):

    shard_sources.py    shard specifications (directories, globs, URLs) -> ShardSets; the training
                        stream and the rank-sharded evaluation reader built on them
    sharding.py         the epoch plan: shards and samples dealt to ranks x workers, equal batches
    tar_samples.py      the tar reader: tar bytes -> raw samples (image and label members only)
    remote_cache.py     http(s):// and pipe: shards fetched once into a bounded local cache (LRU, retries)
    resampling.py       class-aware repeat factors (class-balanced, sqrt, progressive)
    stream.py           the streaming pipeline: re-sampling, shuffle buffer, resume, corrupt-data counting
    decode.py           raw sample -> image tensor, label, extra labels (any transform)
    fast_decode.py      the faster decoder for the none / flip presets (same outputs)
    transforms.py       augmentation presets, multi-scale batches
    batch_views.py      two augmented views per batch on the device (self-supervised methods)
    from_config.py      DataConfig -> training stream + evaluation batches (what a task asks for)
    longtail_data.py    the same with training class counts and a held-out split (long-tail tasks)
"""
