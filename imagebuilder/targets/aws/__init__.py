"""AWS: a stored image in, an AMI out.

:mod:`.publish` registers the AMI from a snapshot that :mod:`.ebs` writes through the EBS
direct APIs; :mod:`.api` holds the boto3 sessions, clients, errors and retries.
"""
