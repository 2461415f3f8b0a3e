from harness.errors import exit_with
from harness.report.cli import main

exit_with(main)
