"""Everything that talks to AWS: minting and revoking canaries (gateway, the only boto3 importer),
its plain-data configuration and errors (config), and the log scrubber for botocore (scrub)."""
