from apps.inventory.models import Item


def items_by_sku(skus) -> list[Item]:
    return list(Item.objects.filter(sku__in=list(skus)))


def item_list():
    return Item.objects.all()
