"""The one exception type for mistakes a user can make (bad flag, missing file, wrong shape).

The CLI prints such an error as one line and exits with status 2; anything else is a bug and
is raised normally.
"""


class ResnetlabError(Exception):
    """A user-caused error whose message names the culprit and the fix, in one sentence."""
