"""The radio layer: how robots talk. The network (in one process or across processes under torchrun), links
that lose messages and their loss models, asynchronous robots, communication graphs and message compressors.
Algorithms in ``optimizers/`` reach the other robots only through the network object of this package."""
