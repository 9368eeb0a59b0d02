"""gbmcvr: conversion-rate prediction toolkit (features, two-step LightGBM, MTDM, calibrated ensembles)."""

__version__ = "0.1.0"
