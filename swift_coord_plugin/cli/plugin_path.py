"""coord-plugin-path: print the absolute path to pass to ``swift ... --external_plugins``."""


def main(argv=None) -> None:
    from swift_coord_plugin.entry import PLUGIN_FILE

    print(PLUGIN_FILE)


if __name__ == "__main__":
    main()
