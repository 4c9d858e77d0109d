from django.db import models


class Item(models.Model):
    """A row a view writes, so a test can see from outside whether it was committed."""

    name = models.CharField(max_length=100)

    class Meta:
        app_label = "app"
