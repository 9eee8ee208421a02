"""Provides what every subcommand's parser shares: the subcommand names and the PATH help."""

from __future__ import annotations

SUBCOMMANDS = ("inspect", "why", "export", "diff")


PATH_HELP = "checkpoint file, folder (shards, DCP, checkpoints) or URL (https://, s3://, ...)"

SUBCOMMAND_HELP = """subcommands (ckptui SUBCOMMAND --help for each):
  inspect PATH [--json]        print the tree, findings, resume card and weights_only verdict
  why PATH [--json]            where the bytes went, and what each remedy would save
  export PATH -o OUT           write a slimmed, verified weights-only copy
  diff A B [--values] [--json] what differs (what load_state_dict would trip on)"""
