"""Small CLI subcommands (the lab's commands live in ``ffnlab.lab``)."""
