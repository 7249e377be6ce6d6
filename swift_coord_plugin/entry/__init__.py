"""Holds only the file that ``--external_plugins`` names.

ms-swift puts the folder of that file on ``sys.path``; keeping it alone here means nothing else of the
package becomes importable under a bare top-level name.
"""
import os

PLUGIN_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "swift_plugin.py")
