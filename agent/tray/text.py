"""What the tray says to a curious employee. Plain text, no GUI imports (headless tests use it)."""

TITLE = "Security tripwire on this computer"

WHAT_IS_THIS = (
    "Your security team placed a decoy AWS access key in this computer's AWS credentials file.\n\n"
    "Nobody uses it for real work. If it is ever used, the security team is alerted, together with "
    "the names of the programs that read the file on this computer. That helps them tell malware "
    "that steals credentials apart from ordinary tools.\n\n"
    "Your own AWS profiles are not changed. Reading the file is fine, and so is looking at it out of "
    "curiosity. If you opened it or used the key by mistake, press the button below: the security "
    "team will see your note next to any alert, which helps them recognise it as a mistake quickly."
)

MISTAKE_BUTTON = "I opened it by mistake"
CLOSE_BUTTON = "Close"
REPORT_SENT = "Thank you - your note was sent to the security team."
REPORT_FAILED = "Your note could not be sent: {error}. Please tell your security team directly."
TOOLTIP = "Security tripwire - click for details"
