"""coord-plugin-path: print the absolute path to pass to ``swift ... --external_plugins``."""
from ..entry import PLUGIN_FILE


def main(argv=None) -> None:
    print(PLUGIN_FILE)


if __name__ == "__main__":
    main()
