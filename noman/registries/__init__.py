"""Polling container registries: token authentication, tag lists, the poller.

Image names are read by ``noman.imageref``, which webhook senders share.

* ``auth``: Docker's token flow and the credentials of a Docker ``config.json``;
* ``client``: ``RegistryClient.list_tags`` over the OCI Distribution API, every failure
  mapped to one of the ``Registry*`` errors of ``noman.errors``;
* ``poller``: ``Poller``, which decides what to poll when and what to deploy, through
  callbacks (it knows nothing of Consul or Nomad).
"""
