from shop.service import service

service.main()
