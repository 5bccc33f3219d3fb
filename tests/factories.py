"""factory_boy factories shared by the tests of every app."""

from __future__ import annotations

from decimal import Decimal

import factory
from django.contrib.auth import get_user_model

from jobs.models import Job
from nodes.models import Node


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("correct horse battery staple")


class JobFactory(factory.django.DjangoModelFactory):
    """A python `echo` job with no schedule (runs only when triggered)."""

    class Meta:
        model = Job

    owner = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"job-{n}")
    kind = Job.Kind.PYTHON
    payload = factory.LazyFunction(lambda: {"handler": "echo", "kwargs": {"message": "hi"}})
    cpu = Decimal("0.1")
    memory_mb = 64


class NodeFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Node

    name = factory.Sequence(lambda n: f"node{n}@host{n}")
    hostname = factory.Sequence(lambda n: f"host{n}")
    ip_address = "127.0.0.1"
    cpu_capacity = Decimal("4")
    memory_mb_capacity = 4096
    labels = factory.LazyFunction(dict)
    status = Node.Status.ONLINE
