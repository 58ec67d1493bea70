"""The worker's handler slots: how many deliveries it may hold, shared by its subscriptions."""

import asyncio


class Slots:
    """Free handler slots shared by every subscription of the process."""

    def __init__(self, size: int):
        self.size = self.free = size
        self._changed = asyncio.Condition()

    async def resize(self, size: int) -> None:
        """More or fewer slots from now on (taken ones come back as they are given)."""
        if size != self.size:
            async with self._changed:
                self.free += size - self.size
                self.size = size
                self._changed.notify_all()

    async def take(self, most: int) -> int:
        async with self._changed:
            await self._changed.wait_for(lambda: self.free > 0)
            taken = min(self.free, most)
            self.free -= taken
            return taken

    async def give(self, count: int = 1) -> None:
        if count:
            async with self._changed:
                self.free += count
                self._changed.notify_all()
