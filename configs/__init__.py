# The shipped YAML configs; installed as the package ``cxr_lightning.configs`` so that
# ``cxr-lightning fit --config resnet_log.yaml`` finds them from any directory.
